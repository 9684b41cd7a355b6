//! `hull-bridge`: a CNI plugin (spec 1.0.0/1.1.0, `type: "hull-bridge"`) for containerd,
//! CRI-O and hull's own CRI server. All the work is in `hull_cni`; see docs/cni.md.

fn main() {
    std::process::exit(hull_cni::plugin::main());
}

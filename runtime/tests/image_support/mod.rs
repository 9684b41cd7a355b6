//! Shared by the image tests (std only, so the `hull` binary's tests can include it):
//! scratch dirs that clean up (unmounting first), a real `docker-registry` on
//! 127.0.0.1 stopped by PID, fixture images from busybox-static, and skopeo pushes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("tests/fixtures/images/mkimage.py"))
        .find(|p| p.is_file())
        .expect("tests/fixtures/images/mkimage.py")
}

/// A scratch dir under /var/tmp named after the test and PID; on drop, every mount
/// under it is detached and the tree removed.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = PathBuf::from(format!(
            "/var/tmp/hull-imgtest-{name}-{}",
            std::process::id()
        ));
        let s = Scratch(p);
        s.cleanup();
        std::fs::create_dir_all(&s.0).unwrap();
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn cleanup(&self) {
        for m in mounts_under(&self.0) {
            let c = std::ffi::CString::new(m).unwrap();
            unsafe { libc_umount(c.as_ptr()) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.cleanup();
    }
}

unsafe extern "C" {
    #[link_name = "umount2"]
    fn umount2_raw(target: *const std::ffi::c_char, flags: i32) -> i32;
}
unsafe fn libc_umount(p: *const std::ffi::c_char) {
    // MNT_DETACH
    unsafe { umount2_raw(p, 2) };
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy().to_string();
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &d || m.starts_with(&format!("{d}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mkimage(out: &Path, kind: &str, tag: &str) {
    mkimage_env(out, kind, tag, &[]);
}

pub fn mkimage_env(out: &Path, kind: &str, tag: &str, env: &[(&str, &str)]) {
    let st = Command::new("python3")
        .arg(fixture_script())
        .arg(out)
        .arg(kind)
        .arg(tag)
        .envs(env.iter().copied())
        .status()
        .unwrap();
    assert!(st.success(), "mkimage {kind} failed");
}

/// TLS and auth choices for a test registry.
#[derive(Default, Clone)]
pub struct RegistryConfig {
    /// (cert.pem, key.pem)
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
    /// (realm URL, service, issuer, root cert bundle)
    pub token: Option<(String, String, String, PathBuf)>,
}

/// A real docker-registry on 127.0.0.1; killed by PID on drop.
pub struct Registry {
    pub port: u16,
    pub host: String,
    child: Child,
    pub dir: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, RegistryConfig::default())
    }

    pub fn start_with(dir: &Path, cfg: RegistryConfig) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let mut y = format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nlog: {{level: error}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            );
            if let Some((c, k)) = &cfg.tls {
                y += &format!(
                    "  tls: {{certificate: {}, key: {}}}\n",
                    c.display(),
                    k.display()
                );
            }
            if let Some(h) = &cfg.htpasswd {
                y += &format!(
                    "auth: {{htpasswd: {{realm: hull-test, path: {}}}}}\n",
                    h.display()
                );
            }
            if let Some((realm, service, issuer, bundle)) = &cfg.token {
                y += &format!(
                    "auth: {{token: {{realm: \"{realm}\", service: {service}, issuer: {issuer}, rootcertbundle: {}}}}}\n",
                    bundle.display()
                );
            }
            let conf = dir.join("config.yml");
            std::fs::write(&conf, y).unwrap();
            let log = std::fs::File::create(dir.join("log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&conf)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry)");
            let mut reg = Registry {
                port,
                host: format!("127.0.0.1:{port}"),
                child,
                dir: dir.to_path_buf(),
            };
            for _ in 0..100 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return reg;
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = reg.child.kill();
            let _ = reg.child.wait();
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
    }

    /// Pushes an OCI layout tag to `repo:tag` here.
    pub fn push(&self, layout: &Path, layout_tag: &str, dest: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{layout_tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.host))
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo push to {dest}: {}\nregistry log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP GET of `http://127.0.0.1:port/path` (tests only): (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => buf[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// Every file under `dir` (relative paths), for leak checks.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

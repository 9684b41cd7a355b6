#!/usr/bin/env python3
"""Writes OCI image layouts for what critest (cri-tools v1.26) and the CRI benchmark
pull, built offline from busybox-static and three small static C programs (their
sources sit next to this file). Upstream images cannot be pulled here; each stand-in
has what the specs look at (user, groups, files, a web server on a port, a setuid
binary). Prints one "LAYOUT TAG PATH" line per image; PATH goes after REGISTRY/.

  usage: images.py OUT_DIR BIN_DIR     (BIN_DIR holds webserver, nonewprivs, pause)
"""
import gzip, hashlib, io, json, os, shutil, subprocess, sys, tarfile

out, bins = sys.argv[1], sys.argv[2]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
MTIME = 1_600_000_000  # fixed, so equal content gives equal digests

def layer(entries):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT) as t:
        for name, kind, arg, *mode in entries:
            ti = tarfile.TarInfo(name); ti.mtime = MTIME
            if kind == 'dir':
                ti.type = tarfile.DIRTYPE; ti.mode = mode[0] if mode else 0o755; t.addfile(ti)
            elif kind == 'file':
                ti.size = len(arg); ti.mode = mode[0] if mode else 0o644; t.addfile(ti, io.BytesIO(arg))
            elif kind == 'sym':
                ti.type = tarfile.SYMTYPE; ti.linkname = arg; t.addfile(ti)
    return raw.getvalue()

def write_layout(name, layers, config, tags):
    d = f"{out}/{name}"
    os.makedirs(f"{d}/blobs/sha256")
    def blob(data, media):
        h = hashlib.sha256(data).hexdigest()
        open(f"{d}/blobs/sha256/{h}", 'wb').write(data)
        return {"mediaType": media, "digest": f"sha256:{h}", "size": len(data)}
    descs, diffs = [], []
    for raw in layers:
        diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append(blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"))
    cfg = {"architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40Z",
           "config": dict({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                           "Cmd": ["sh"]}, **config),
           "rootfs": {"type": "layers", "diff_ids": diffs}}
    c = blob(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    m = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": c, "layers": descs}).encode(),
             "application/vnd.oci.image.manifest.v1+json")
    json.dump({"schemaVersion": 2, "manifests": [dict(m, annotations={"org.opencontainers.image.ref.name": "img"})]},
              open(f"{d}/index.json", 'w'))
    json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{d}/oci-layout", 'w'))
    for path in tags:
        print(d, "img", path)

bb = open(shutil.which('busybox'), 'rb').read()
applets = [a for a in subprocess.run(['busybox', '--list'], capture_output=True, text=True).stdout.split()
           if a != 'busybox']
passwd = (b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n"
          b"default-user:x:1000:1000::/home/default-user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
group = (b"root:x:0:\nwww-data:x:33:\nusers:x:100:\ndefault-user:x:1000:\n"
         b"group-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n")
base = layer([('bin', 'dir', None), ('bin/busybox', 'file', bb, 0o755), ('etc', 'dir', None),
              ('etc/passwd', 'file', passwd), ('etc/group', 'file', group),
              ('tmp', 'dir', None, 0o1777), ('var', 'dir', None), ('var/run', 'dir', None),
              ('root', 'dir', None, 0o700), ('home', 'dir', None), ('usr', 'dir', None),
              ('usr/sbin', 'dir', None), ('usr/local', 'dir', None), ('usr/local/bin', 'dir', None)]
             + [(f'bin/{a}', 'sym', 'busybox') for a in applets])
def binary(name): return open(f"{bins}/{name}", 'rb').read()

E2E, CRI = "e2e-test-images/", "k8s-staging-cri-tools/"
write_layout("busybox", [base], {}, [E2E + "busybox:1.29-2", "hull-bench/busybox:1"])
web = layer([('usr/sbin/nginx', 'file', binary('webserver'), 0o755),
             ('usr/local/bin/httpd', 'file', binary('webserver'), 0o755)])
write_layout("nginx", [base, web], {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}},
             [E2E + "nginx:1.14-2"])
write_layout("httpd", [base, web], {"Cmd": ["httpd", "-D", "FOREGROUND"]}, [E2E + "httpd:2.4.39-4"])
write_layout("hostnet-nginx", [base, web],
             {"Cmd": ["nginx", "-g", "daemon off;"], "Env": ["PATH=/usr/sbin:/bin", "PORT=12003"]},
             [CRI + "hostnet-nginx-amd64"])
nnp = layer([('usr/local/bin/nnp', 'file', binary('nonewprivs'), 0o4755)])
write_layout("nonewprivs", [base, nnp], {"Cmd": ["/usr/local/bin/nnp"]}, [E2E + "nonewprivs:1.3"])
pause = layer([('pause', 'file', binary('pause'), 0o755)])
write_layout("pause", [pause], {"Cmd": None, "Entrypoint": ["/pause"]}, ["hull-bench/pause:1"])
for user, path in [("1002", "test-image-user-uid"), ("www-data", "test-image-user-username"),
                   ("1003:users", "test-image-user-uid-group"), ("www-data:users", "test-image-user-username-group"),
                   ("1000", "test-image-predefined-group")]:
    write_layout(path, [base], {"User": user}, [CRI + path])
write_layout("test-image-latest", [base, layer([('test-image-latest', 'file', b'x\n')])], {},
             [CRI + "test-image-latest"])
write_layout("test-image-tag", [base, layer([('test', 'file', b'x\n')])], {},
             [CRI + "test-image-tag:test", CRI + "test-image-tag:all"])
for i in (1, 2, 3):
    write_layout(f"test-image-{i}", [base, layer([(f'test-image-{i}', 'file', b'x\n')])], {},
                 [CRI + f"test-image-{i}:latest"])
write_layout("test-image-tags", [base, layer([('test-image-tags', 'file', b'x\n')])], {},
             [CRI + f"test-image-tags:{i}" for i in (1, 2, 3)])

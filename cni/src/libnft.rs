//! libnftables, the library the `nft` binary is a thin shell around, loaded into this
//! process with `dlopen` at first use: the same parser, cache and transactions as
//! `nft -f`, without a fork and exec (and the library's start-up) per batch. In a
//! 50-pod burst the exec'd `nft` was ~7% of the node's CPU, two thirds of it process
//! start-up. Loaded at run time, not linked, so hull builds and runs where the library
//! is missing: callers then exec `nft` (see `nft::apply`).
//!
//! One context, owned by one thread that runs every batch: a context is not meant to
//! be shared between threads, reuse keeps its netlink socket and cache (refreshed by
//! generation id), and the library's allocations stay in that thread's malloc arena.
//! Called from the CRI server's many blocking threads directly, it spread its cache
//! over every thread's arena: +30 MiB of RSS at 50 pods.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

const LIBRARY: &CStr = c"libnftables.so.1";
/// `NFT_CTX_DEFAULT` and `NFT_CTX_OUTPUT_JSON` of libnftables.h.
const CTX_DEFAULT: u32 = 0;
pub const OUTPUT_JSON: c_uint = 1 << 4;

type Ctx = *mut c_void;

struct Api {
    ctx_new: unsafe extern "C" fn(u32) -> Ctx,
    buffer_output: unsafe extern "C" fn(Ctx) -> c_int,
    buffer_error: unsafe extern "C" fn(Ctx) -> c_int,
    output_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    error_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    set_output_flags: unsafe extern "C" fn(Ctx, c_uint),
    run_cmd: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
}

/// The loaded library and its one context.
struct Nft {
    api: Api,
    ctx: Ctx,
}

/// The calling thread's network namespace (its nsfs inode).
fn netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

fn sym<T>(lib: *mut c_void, name: &CStr) -> Option<T> {
    // SAFETY: dlsym on a handle dlopen returned; the caller names the symbol's C type.
    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
    // SAFETY: a non-null symbol of libnftables' documented signature, as T says.
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn load() -> Option<Nft> {
    // SAFETY: dlopen of a system library by soname; it is never closed.
    let lib = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return None;
    }
    let api = Api {
        ctx_new: sym(lib, c"nft_ctx_new")?,
        buffer_output: sym(lib, c"nft_ctx_buffer_output")?,
        buffer_error: sym(lib, c"nft_ctx_buffer_error")?,
        output_buffer: sym(lib, c"nft_ctx_get_output_buffer")?,
        error_buffer: sym(lib, c"nft_ctx_get_error_buffer")?,
        set_output_flags: sym(lib, c"nft_ctx_output_set_flags")?,
        run_cmd: sym(lib, c"nft_run_cmd_from_buffer")?,
    };
    // SAFETY: the library's own constructor and setters on the context it returned.
    unsafe {
        let ctx = (api.ctx_new)(CTX_DEFAULT);
        if ctx.is_null() || (api.buffer_output)(ctx) != 0 || (api.buffer_error)(ctx) != 0 {
            return None;
        }
        Some(Nft { api, ctx })
    }
}

/// One batch for the nft thread, and where its outcome goes.
struct Job {
    commands: CString,
    flags: c_uint,
    reply: Sender<Result<String, String>>,
}

/// The nft thread (started at first use, in the caller's network namespace) and
/// that namespace.
struct Worker {
    jobs: Mutex<Sender<Job>>,
    netns: u64,
}

fn worker() -> Option<&'static Worker> {
    static WORKER: OnceLock<Option<Worker>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            if std::env::var_os("HULL_NFT_EXEC").is_some_and(|v| v != "0") {
                return None;
            }
            let netns = netns()?;
            let (jobs, rx) = channel::<Job>();
            let (ready_tx, ready) = channel();
            std::thread::Builder::new()
                .name("hull-nft".into())
                .spawn(move || {
                    let Some(n) = load() else {
                        let _ = ready_tx.send(false);
                        return;
                    };
                    let _ = ready_tx.send(true);
                    for job in rx {
                        let _ = job.reply.send(n.run(&job.commands, job.flags));
                    }
                })
                .ok()?;
            ready.recv().ok()?.then(|| Worker {
                jobs: Mutex::new(jobs),
                netns,
            })
        })
        .as_ref()
}

impl Nft {
    fn run(&self, commands: &CStr, flags: c_uint) -> Result<String, String> {
        // SAFETY: calls on the context only this thread uses; the buffers are copied
        // out before the next call.
        unsafe {
            (self.api.set_output_flags)(self.ctx, flags);
            let rc = (self.api.run_cmd)(self.ctx, commands.as_ptr());
            let out = take((self.api.output_buffer)(self.ctx));
            let err = take((self.api.error_buffer)(self.ctx));
            if rc == 0 { Ok(out) } else { Err(err) }
        }
    }
}

/// Whether libnftables could be loaded (else `run` always returns `None`).
pub fn available() -> bool {
    worker().is_some()
}

fn take(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftables returns a NUL-terminated buffer it owns until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs `commands` (nft syntax, one transaction) with output `flags`; `None` when the
/// library is not loaded or the caller is in another network namespace than the nft
/// thread (exec `nft` then), else `Ok(stdout)` or `Err(stderr)` as `nft` prints them.
pub fn run(commands: &str, flags: c_uint) -> Option<Result<String, String>> {
    let w = worker()?;
    if netns() != Some(w.netns) {
        return None;
    }
    let Ok(commands) = CString::new(commands) else {
        return Some(Err("nft batch holds a NUL byte".into()));
    };
    let (reply, rx) = channel();
    let sent = match w.jobs.lock() {
        Ok(jobs) => jobs.send(Job {
            commands,
            flags,
            reply,
        }),
        Err(_) => return None,
    };
    sent.ok()?;
    rx.recv().ok()
}

//! libnftables, the library the `nft` binary is a thin shell around, loaded into this
//! process with `dlopen` at first use: the same parser, cache and transactions as
//! `nft -f`, without a fork and exec (and the library's start-up) per batch. In a
//! 50-pod burst the exec'd `nft` was ~7% of the node's CPU, two thirds of it process
//! start-up. Loaded at run time, not linked, so hull builds and runs where the library
//! is missing: callers then exec `nft` (see `nft::apply`).
//!
//! One context, reused under a mutex: a context is not meant to be shared between
//! threads, and reuse keeps its netlink socket and cache (refreshed by generation id).

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
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
    /// The network namespace the context's netlink socket was opened in.
    netns: Option<u64>,
}

/// The calling thread's network namespace (its nsfs inode).
fn netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

// SAFETY: the context is only ever used under the mutex below, by one thread at a time.
unsafe impl Send for Nft {}

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
        Some(Nft {
            api,
            ctx,
            netns: netns(),
        })
    }
}

fn nft() -> Option<&'static Mutex<Nft>> {
    static NFT: OnceLock<Option<Mutex<Nft>>> = OnceLock::new();
    NFT.get_or_init(|| {
        if std::env::var_os("HULL_NFT_EXEC").is_some_and(|v| v != "0") {
            return None;
        }
        load().map(Mutex::new)
    })
    .as_ref()
}

/// Whether libnftables could be loaded (else `run` always returns `None`).
pub fn available() -> bool {
    nft().is_some()
}

fn take(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftables returns a NUL-terminated buffer it owns until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs `commands` (nft syntax, one transaction) with output `flags`; `None` when the
/// library is not loaded, else `Ok(stdout)` or `Err(stderr)` as `nft` would print them.
pub fn run(commands: &str, flags: c_uint) -> Option<Result<String, String>> {
    let lock = nft()?;
    let Ok(cmd) = CString::new(commands) else {
        return Some(Err("nft batch holds a NUL byte".into()));
    };
    let n = match lock.lock() {
        Ok(n) => n,
        Err(poisoned) => poisoned.into_inner(),
    };
    // The context talks to the namespace it was made in; from any other, exec `nft`.
    if n.netns.is_none() || n.netns != netns() {
        return None;
    }
    // SAFETY: calls on the context this mutex guards; the buffers are copied out
    // before the lock is released.
    unsafe {
        (n.api.set_output_flags)(n.ctx, flags);
        let rc = (n.api.run_cmd)(n.ctx, cmd.as_ptr());
        let out = take((n.api.output_buffer)(n.ctx));
        let err = take((n.api.error_buffer)(n.ctx));
        Some(if rc == 0 { Ok(out) } else { Err(err) })
    }
}

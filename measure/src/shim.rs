//! Safe wrappers over `csrc/shim.cpp`.

use std::ffi::{c_char, c_int, c_long, c_void, CStr};

extern "C" {
    fn xarena_cuda_memory(
        device: c_int,
        current: *mut i64,
        peak: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn xarena_cuda_reset_peak(device: c_int, err: *mut c_char, len: usize) -> c_int;
    fn xarena_torch_version() -> *const c_char;
    fn xarena_cuda_timer_new(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
    fn xarena_cuda_timer_free(timer: *mut c_void);
    fn xarena_cuda_timer_record(
        timer: *mut c_void,
        which: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn xarena_cuda_timer_elapsed_ms(
        timer: *mut c_void,
        ms: *mut f64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn xarena_cuda_runtime_version() -> c_long;
    fn xarena_tf32(matmul: *mut c_int, cudnn: *mut c_int) -> c_int;
}

fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut buf = vec![0 as c_char; 512];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        Ok(())
    } else {
        // SAFETY: the shim writes a NUL-terminated message into the buffer on failure.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
        Err(msg.to_string_lossy().into_owned())
    }
}

/// The CUDA caching allocator's allocated bytes: (now, peak since the last reset).
pub fn cuda_memory(device: usize) -> Result<(u64, u64), String> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: plain out-pointers and a buffer of the stated length.
    call(|err, len| unsafe {
        xarena_cuda_memory(device as c_int, &mut current, &mut peak, err, len)
    })?;
    Ok((current.max(0) as u64, peak.max(0) as u64))
}

pub fn cuda_reset_peak(device: usize) -> Result<(), String> {
    // SAFETY: a buffer of the stated length.
    call(|err, len| unsafe { xarena_cuda_reset_peak(device as c_int, err, len) })
}

/// LibTorch's version, from the headers the shim was built against.
pub fn torch_version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(xarena_torch_version()) }
        .to_string_lossy()
        .into_owned()
}

/// The CUDA runtime LibTorch was built with, as "13.0", when CUDA is usable.
pub fn cuda_runtime_version() -> Option<String> {
    // SAFETY: no arguments; the shim catches every exception.
    let v = unsafe { xarena_cuda_runtime_version() };
    (v > 0).then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// A pair of CUDA events on a device's current stream, for device-side timing.
pub struct CudaTimer(*mut c_void);

impl CudaTimer {
    pub fn new(device: usize) -> Result<CudaTimer, String> {
        let mut timer = std::ptr::null_mut();
        // SAFETY: a buffer of the stated length; a null result comes with a message.
        call(|err, len| unsafe {
            timer = xarena_cuda_timer_new(device as c_int, err, len);
            c_int::from(timer.is_null())
        })?;
        Ok(CudaTimer(timer))
    }

    fn record(&mut self, which: c_int) -> Result<(), String> {
        // SAFETY: self.0 is a live timer from xarena_cuda_timer_new.
        call(|err, len| unsafe { xarena_cuda_timer_record(self.0, which, err, len) })
    }

    /// Enqueues the start event: work launched after this is timed.
    pub fn start(&mut self) -> Result<(), String> {
        self.record(0)
    }

    /// Enqueues the stop event.
    pub fn stop(&mut self) -> Result<(), String> {
        self.record(1)
    }

    /// Seconds between start and stop on the device, waiting for the stop event.
    pub fn elapsed_s(&self) -> Result<f64, String> {
        let mut ms = 0.0;
        // SAFETY: self.0 is a live timer; ms is a plain out-pointer.
        call(|err, len| unsafe { xarena_cuda_timer_elapsed_ms(self.0, &mut ms, err, len) })?;
        Ok(ms / 1e3)
    }
}

impl Drop for CudaTimer {
    fn drop(&mut self) {
        // SAFETY: created by xarena_cuda_timer_new and freed once.
        unsafe { xarena_cuda_timer_free(self.0) }
    }
}

/// TF32 as LibTorch's global context has it for CUDA (the settings any CUDA work in this
/// process, and in workers started with the same environment, runs under).
pub fn tf32() -> Option<xarena_reports::schema::Tf32> {
    let (mut matmul, mut cudnn) = (0, 0);
    // SAFETY: two out-pointers; the shim catches every exception.
    let rc = unsafe { xarena_tf32(&mut matmul, &mut cudnn) };
    (rc == 0).then_some(xarena_reports::schema::Tf32 {
        matmul: matmul != 0,
        cudnn: cudnn != 0,
    })
}

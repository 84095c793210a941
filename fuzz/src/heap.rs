//! A global allocator that bounds the heap, so that an input which makes a
//! decoder reserve memory out of proportion to its size (a `Vec` sized from
//! a MessagePack length prefix, say) fails the run.
//!
//! libFuzzer's own `-malloc_limit_mb` works only under a sanitizer (it needs
//! the sanitizer's malloc hooks), and `-rss_limit_mb` sees only memory that
//! was written to, so neither catches a reservation that is never filled in
//! a build without a sanitizer, the stable toolchain's. This bound holds in
//! every build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The most heap the process may hold at once: 64 MiB, a thousand times the
/// largest frame a node reads by default (`--max-frame-bytes` 65536).
const HEAP_LIMIT_BYTES: usize = 64 << 20;

/// The system allocator, counting the bytes it holds and aborting (a crash
/// libFuzzer reports, with the input that caused it) past
/// [`HEAP_LIMIT_BYTES`].
struct BoundedHeap {
    live: AtomicUsize,
    tripped: AtomicBool,
}

#[global_allocator]
static HEAP: BoundedHeap = BoundedHeap { live: AtomicUsize::new(0), tripped: AtomicBool::new(false) };

impl BoundedHeap {
    fn reserve(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if live > HEAP_LIMIT_BYTES && !self.tripped.swap(true, Ordering::Relaxed) {
            // No allocation from here on: the message is formatted straight
            // into the unbuffered stderr.
            let _ = writeln!(
                std::io::stderr(),
                "heap limit: an allocation of {bytes} bytes brings the heap to {live} bytes, over {HEAP_LIMIT_BYTES}"
            );
            std::process::abort();
        }
    }

    fn release(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// `block`, or null with its `bytes` given back when the system had none.
    fn unless_null(&self, block: *mut u8, bytes: usize) -> *mut u8 {
        if block.is_null() {
            self.release(bytes);
        }
        block
    }
}

// SAFETY: every call is passed on to `System` unchanged; the counting
// around it touches no memory the caller owns.
unsafe impl GlobalAlloc for BoundedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.reserve(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        self.unless_null(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.reserve(layout.size());
        // SAFETY: as for `alloc`.
        self.unless_null(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.release(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_size = layout.size();
        self.reserve(new_size.saturating_sub(old_size));
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller
        // upholds `realloc`'s contract for `new_size`.
        let block = unsafe { System.realloc(ptr, layout, new_size) };
        // A failed realloc keeps the old block.
        let held = if block.is_null() { old_size } else { new_size };
        self.release(old_size.max(new_size) - held);
        block
    }
}

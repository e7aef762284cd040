//! CPU-heavy and memory-heavy work at the end of DATA, kept off the async workers and
//! bounded, so one sender's large or hostile message never delays other sessions' replies:
//!
//! - [`checks`] runs a message's checks in place when it is small (a few tens of
//!   microseconds) and otherwise through [`offload`], on the blocking pool (its DNS waits
//!   included: the future is driven there with the runtime's handle), never on a worker;
//! - [`cpu`] is a slot for CPU-heavy code (parsing, body hashes, scoring), one fewer than the
//!   machine's cores, so the workers always keep a core to answer other clients;
//! - [`Memory`] is the `limits.message_memory` budget: a message checked in memory holds its
//!   share until its verdict;
//! - [`CatchPanic`] turns a panic in a session's or a message's work into an error of that
//!   work alone, the same whether it ran in place or offloaded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

fn cpu_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores.saturating_sub(1).max(1))
    })
}

tokio::task_local! {
    /// Set while work runs on the blocking pool through [`offload`].
    static OFFLOADED: ();
}

/// Wait for a CPU slot, when running offloaded; hold it only around CPU-bound code, never
/// across a DNS wait. Work that runs in place (a small message) needs none.
pub async fn cpu() -> Option<SemaphorePermit<'static>> {
    OFFLOADED.try_with(|_| ()).ok()?;
    Some(
        cpu_slots()
            .acquire()
            .await
            .expect("the CPU semaphore is never closed"),
    )
}

/// Messages up to this size are checked in place: their work is a few tens of microseconds,
/// less than a trip to the blocking pool costs. Everything per message is linear, so the
/// most such a message can cost stays small.
pub const IN_PLACE: usize = 64 * 1024;

/// Run the checks of a message of `size` bytes: in place when it is small, else on the
/// blocking pool ([`offload`]).
pub async fn checks<F, Fut, T>(size: usize, work: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    if size <= IN_PLACE {
        CatchPanic::new(work()).await
    } else {
        offload(work).await
    }
}

/// Run `work` on the blocking pool. A panic inside comes back as an `Err` with its message.
pub async fn offload<F, Fut, T>(work: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(OFFLOADED.scope((), work())))
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(p) => panic_message(p.as_ref()),
            Err(e) => e.to_string(),
        })
}

/// Polls a future and turns a panic inside it into an `Err` with the panic's message.
pub struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> CatchPanic<F> {
    pub fn new(f: F) -> CatchPanic<F> {
        CatchPanic(Box::pin(f))
    }
}

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => std::task::Poll::Ready(Err(panic_message(p.as_ref()))),
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// `limits.message_memory`, counted in KiB.
pub struct Memory {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// How long a message waits for memory before its sender is told to come back.
const MEMORY_WAIT: Duration = Duration::from_secs(300);

impl Memory {
    pub fn new(bytes: u64) -> Memory {
        let total_kib = (bytes / 1024).clamp(1, u32::MAX as u64 / 2) as u32;
        Memory {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Reserve `bytes` (at most the whole budget, so any one message fits); `None` after
    /// waiting [`MEMORY_WAIT`].
    pub async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = (bytes / 1024 + 1).min(self.total_kib as u64) as u32;
        tokio::time::timeout(MEMORY_WAIT, self.kib.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }

    /// KiB not reserved now.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offload_runs_async_work_off_the_workers_and_reports_panics() {
        let v = offload(|| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        })
        .await;
        assert_eq!(v, Ok(7));
        let p: Result<(), String> = offload(|| async { panic!("boom") }).await;
        assert_eq!(p.unwrap_err(), "boom");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_an_error_whether_the_checks_ran_in_place_or_offloaded() {
        for size in [IN_PLACE, IN_PLACE + 1] {
            let p: Result<(), String> =
                checks(size, || async { panic!("at {}", "the end of DATA") }).await;
            assert_eq!(p.unwrap_err(), "at the end of DATA", "size {size}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_waited_for_and_given_back_a_big_message_fits_and_a_waiter_gives_up() {
        let m = Arc::new(Memory::new(1024 * 1024));
        let a = m.reserve(600 * 1024).await.unwrap();
        assert!(m.available_kib() < 1024 - 600);
        // Bigger than the whole budget: waits for all of it, and gets it once the rest is free.
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { m.reserve(10 * 1024 * 1024).await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "waits while the budget is taken");
        drop(a);
        assert!(waiting.await.unwrap());
        assert_eq!(m.available_kib(), 1024, "given back");
        // A message that never gets its share gives up after MEMORY_WAIT.
        let all = m.reserve(1024 * 1024).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(m.reserve(1).await.is_none());
        assert!(started.elapsed() >= MEMORY_WAIT);
        drop(all);
        assert_eq!(m.available_kib(), 1024);
    }
}

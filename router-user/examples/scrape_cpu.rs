//! What the metrics scraper costs: N local servers serve one engine fixture, the scraper polls
//! them at the production cadence on its own single-threaded runtime, and that thread's CPU
//! time (CLOCK_THREAD_CPUTIME_ID) and heap allocations are counted over the run. The servers
//! run on other threads and are not counted.
//!
//! Run: `cargo run --release -p router-user --example scrape_cpu -- [ENDPOINTS] [SECONDS] [FIXTURE]`
//! (defaults: 8 endpoints, 10 s, tests/fixtures/metrics/vllm.txt; 50 ms interval, 40 ms timeout).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use switchyard::clock::SystemClock;
use switchyard::telemetry::scrape::{ScrapeConfig, ScrapeTarget, Scraper};

/// Counts allocations made by the thread that enabled counting.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
            }
        });
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Debug)]
struct Report {
    endpoints: usize,
    wall: Duration,
    cpu: Duration,
    scrapes: u64,
    failures: u64,
    allocations: u64,
}

/// CPU time of the calling thread. `CLOCK_THREAD_CPUTIME_ID` is the scheduler's exact
/// account; `getrusage(RUSAGE_THREAD)` is sampled per timer tick (4 ms here) and too coarse for
/// the ~100 ms a 10 s run uses.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime writes into the zeroed struct we own.
    let spec = unsafe {
        let mut spec: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec);
        spec
    };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// Runs the scraper against `addrs` for `run` on the calling thread and measures that thread.
fn measure(addrs: Vec<SocketAddr>, run: Duration) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("scraper runtime");
    runtime.block_on(async {
        let config = ScrapeConfig {
            targets: addrs.iter().copied().map(ScrapeTarget::new).collect(),
            ..ScrapeConfig::default()
        };
        let scraper = Scraper::spawn(config, Arc::new(SystemClock)).expect("valid config");
        // Warm up: connections open, buffers grow to the page size.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = totals(&scraper);
        COUNTING.with(|on| on.set(true));
        let cpu_start = thread_cpu_time();
        let wall_start = Instant::now();
        tokio::time::sleep(run).await;
        let cpu = thread_cpu_time() - cpu_start;
        let wall = wall_start.elapsed();
        COUNTING.with(|on| on.set(false));
        let after = totals(&scraper);
        Report {
            endpoints: addrs.len(),
            wall,
            cpu,
            scrapes: after.0 - before.0,
            failures: after.1 - before.1,
            allocations: ALLOCATIONS.with(Cell::get),
        }
    })
}

fn totals(scraper: &Scraper) -> (u64, u64) {
    let mut totals = (0, 0);
    scraper.for_each(|status| {
        totals.0 += status.scrape.successes;
        totals.1 += status.scrape.failures;
    });
    totals
}

fn main() {
    let mut args = std::env::args().skip(1);
    let endpoints: usize = args
        .next()
        .map_or(8, |n| n.parse().expect("ENDPOINTS is a number"));
    let seconds: u64 = args
        .next()
        .map_or(10, |n| n.parse().expect("SECONDS is a number"));
    let fixture = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/metrics/vllm.txt"),
        PathBuf::from,
    );
    let body = std::fs::read_to_string(&fixture)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", fixture.display()));

    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let addrs: Vec<SocketAddr> = (0..endpoints)
        .map(|_| {
            let body = body.clone();
            servers.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("address");
                let router =
                    Router::new().route("/metrics", get(move || std::future::ready(body.clone())));
                tokio::spawn(async move { axum::serve(listener, router).await });
                addr
            })
        })
        .collect();

    let report = std::thread::spawn(move || measure(addrs, Duration::from_secs(seconds)))
        .join()
        .expect("measurement thread");
    let core_pct = report.cpu.as_secs_f64() / report.wall.as_secs_f64() * 100.0;
    let scrapes = report.scrapes.max(1) as f64;
    println!(
        "fixture            {} ({} bytes)",
        fixture.display(),
        body.len()
    );
    println!("endpoints          {}", report.endpoints);
    println!("wall               {:.2} s", report.wall.as_secs_f64());
    println!(
        "scrapes            {} ok, {} failed",
        report.scrapes, report.failures
    );
    println!(
        "scraper CPU        {:.3} s = {core_pct:.2} % of one core",
        report.cpu.as_secs_f64()
    );
    println!(
        "per endpoint       {:.3} % of one core",
        core_pct / report.endpoints as f64
    );
    println!(
        "per scrape         {:.1} µs CPU",
        report.cpu.as_secs_f64() * 1e6 / scrapes
    );
    println!(
        "allocations/scrape {:.1}",
        report.allocations as f64 / scrapes
    );
}

//! What the metrics scraper costs: N local servers serve one engine fixture, the scraper polls
//! them at the production cadence on its own single-threaded runtime, and that thread's CPU
//! time (CLOCK_THREAD_CPUTIME_ID) and heap allocations are counted over the run. The servers
//! run on other threads and are not counted.
//!
//! Run: `cargo run --release -p router-user --example scrape_cpu -- [ENDPOINTS] [SECONDS]
//! [FIXTURE] [filtered|full]` (defaults: 8 endpoints, 10 s, `metrics/vllm.txt` under
//! tests/fixtures, `filtered`; 50 ms interval, 40 ms timeout). The servers honour `?name[]=`
//! like prometheus_client's exporter; `full` turns the scraper's server-side filter off.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::RawQuery;
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

#[path = "../../tests/telemetry_support/mod.rs"]
mod support;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Debug)]
struct Report {
    endpoints: usize,
    wall: Duration,
    cpu: Duration,
    scrapes: u64,
    warmup_scrapes: u64,
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
fn measure(addrs: Vec<SocketAddr>, run: Duration, server_side_filter: bool) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("scraper runtime");
    runtime.block_on(async {
        let config = ScrapeConfig {
            targets: addrs.iter().copied().map(ScrapeTarget::new).collect(),
            server_side_filter,
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
            warmup_scrapes: before.0,
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
    let fixture = args.next().unwrap_or_else(|| "metrics/vllm.txt".to_owned());
    let server_side_filter = match args.next().as_deref() {
        None | Some("filtered") => true,
        Some("full") => false,
        Some(other) => panic!("mode is `filtered` or `full`, not `{other}`"),
    };
    let page = support::fixture(&fixture);

    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let served_bytes = Arc::new(AtomicU64::new(0));
    let addrs: Vec<SocketAddr> = (0..endpoints)
        .map(|_| {
            let page = page.clone();
            let served = Arc::clone(&served_bytes);
            // Like prometheus_client's exporter (vLLM, trtllm-serve): honours `?name[]=`.
            let router = Router::new().route(
                "/metrics",
                get(move |RawQuery(query): RawQuery| {
                    let body = support::restrict_to_names(&page, query.as_deref())
                        .unwrap_or_else(|| page.clone());
                    served.fetch_add(body.len() as u64, Ordering::Relaxed);
                    std::future::ready(body)
                }),
            );
            servers.block_on(support::serve(router))
        })
        .collect();

    let report = std::thread::spawn(move || {
        measure(addrs, Duration::from_secs(seconds), server_side_filter)
    })
    .join()
    .expect("measurement thread");
    let core_pct = report.cpu.as_secs_f64() / report.wall.as_secs_f64() * 100.0;
    let scrapes = report.scrapes.max(1) as f64;
    let mode = if server_side_filter {
        "filtered (?name[]=)"
    } else {
        "full pages"
    };
    println!(
        "fixture            {fixture} ({} bytes), {mode}",
        page.len()
    );
    println!("endpoints          {}", report.endpoints);
    println!("wall               {:.2} s", report.wall.as_secs_f64());
    println!(
        "scrapes            {} ok, {} failed",
        report.scrapes, report.failures
    );
    println!(
        "served             {:.0} bytes/scrape on average (warm-up included)",
        served_bytes.load(Ordering::Relaxed) as f64
            / (report.scrapes + report.warmup_scrapes).max(1) as f64
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

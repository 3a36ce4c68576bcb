//! The loop every watcher here shares: reflector streams signal changes, bursts are coalesced
//! for a short debounce window, and a freshly assembled snapshot is published on a
//! `tokio::sync::watch` channel when its content changed.
use std::collections::HashSet;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::time::Instant;

/// Default coalescing window: a rollout's burst of pod events becomes one update, and a change
/// still reaches the consumer well within a second.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// What one reflector stream reports.
pub(crate) enum Signal {
    /// Its store changed.
    Changed,
    /// Its store holds a complete list (first sync, or a re-list after the watch expired).
    Synced(&'static str),
    /// The watch failed; the watcher retries with backoff.
    Failed(&'static str, watcher::Error),
    /// Nothing the snapshot depends on.
    Nothing,
}

/// Maps a reflector's event stream to signals.
pub(crate) fn signals<K: Send + 'static>(
    source: &'static str,
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> BoxStream<'static, Signal> {
    events
        .map(move |event| match event {
            Ok(watcher::Event::InitDone) => Signal::Synced(source),
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Nothing,
            Err(err) => Signal::Failed(source, err),
        })
        .boxed()
}

/// A published snapshot: carries a revision and compares by content.
pub(crate) trait Snapshot: Clone {
    fn revision(&self) -> u64;
    fn set_revision(&mut self, revision: u64);
    fn same_content(&self, other: &Self) -> bool;
}

impl Snapshot for super::pool_state::PoolState {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
    fn same_content(&self, other: &Self) -> bool {
        super::pool_state::PoolState::same_content(self, other)
    }
}

impl Snapshot for super::node_pods::NodePods {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
    fn same_content(&self, other: &Self) -> bool {
        super::node_pods::NodePods::same_content(self, other)
    }
}

/// Runs until every receiver is gone (or the streams end). Nothing is published before every
/// source in `sources` has synced once; after that, each burst of changes is published once,
/// `debounce` after its first event, if the assembled content differs. `on_change(old, new)`
/// runs before each publication (for logs).
pub(crate) async fn publish_loop<T: Snapshot>(
    mut signals: BoxStream<'static, Signal>,
    sources: &[&'static str],
    debounce: Duration,
    tx: watch::Sender<T>,
    mut assemble: impl FnMut() -> T,
    mut on_change: impl FnMut(&T, &T),
) {
    let mut synced: HashSet<&'static str> = HashSet::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let all_synced = sources.iter().all(|s| synced.contains(s));
        tokio::select! {
            () = tx.closed() => {
                tracing::debug!("no receiver left; watcher stops");
                return;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                deadline = None;
                let mut next = assemble();
                tx.send_if_modified(|current| {
                    if current.same_content(&next) {
                        return false;
                    }
                    next.set_revision(current.revision() + 1);
                    on_change(current, &next);
                    *current = next;
                    true
                });
            }
            signal = signals.next() => {
                let changed = match signal {
                    None => {
                        tracing::warn!("watch streams ended; watcher stops");
                        return;
                    }
                    Some(Signal::Changed) => true,
                    Some(Signal::Synced(source)) => {
                        synced.insert(source);
                        true
                    }
                    Some(Signal::Failed(source, err)) => {
                        tracing::warn!(source, error = %err, "watch failed; retrying with backoff");
                        false
                    }
                    Some(Signal::Nothing) => false,
                };
                let all_synced = all_synced || sources.iter().all(|s| synced.contains(s));
                if changed && all_synced && deadline.is_none() {
                    deadline = Some(Instant::now() + debounce);
                }
            }
        }
    }
}

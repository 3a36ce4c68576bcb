//! LoRA adapters on the simulated GPU: names, which are resident in the `--max-loras` slots,
//! and how many running requests use each.
use std::collections::HashMap;
use std::sync::Arc;

/// Adapter index inside one engine.
pub(crate) type LoraId = u16;

#[derive(Debug, Default)]
pub(crate) struct LoraSlots {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, LoraId>,
    max_loras: usize,
    /// Resident adapters with the step number they were last used in (LRU eviction).
    resident: Vec<(LoraId, u64)>,
    /// Running requests per adapter.
    running: Vec<u32>,
}

impl LoraSlots {
    pub fn new(max_loras: u32) -> Self {
        Self {
            max_loras: max_loras as usize,
            ..Self::default()
        }
    }

    pub fn max_loras(&self) -> usize {
        self.max_loras
    }

    /// Index of `name`, registering it on first use; `None` when the engine has more than
    /// `u16::MAX` distinct adapters (far past any real server's adapter cache).
    pub fn intern(&mut self, name: &Arc<str>) -> Option<LoraId> {
        if let Some(&id) = self.index.get(name) {
            return Some(id);
        }
        let id = LoraId::try_from(self.names.len()).ok()?;
        self.names.push(name.clone());
        self.index.insert(name.clone(), id);
        self.running.push(0);
        Some(id)
    }

    pub fn id(&self, name: &str) -> Option<LoraId> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: LoraId) -> &Arc<str> {
        &self.names[usize::from(id)]
    }

    pub fn is_resident(&self, id: LoraId) -> bool {
        self.resident.iter().any(|&(resident, _)| resident == id)
    }

    /// Marks `id` used in step `step`; loads it if needed, evicting the least recently used
    /// adapter not in `batch`. Returns whether a load happened.
    pub fn use_in_step(&mut self, id: LoraId, step: u64, batch: &[LoraId]) -> bool {
        if let Some(entry) = self
            .resident
            .iter_mut()
            .find(|(resident, _)| *resident == id)
        {
            entry.1 = step;
            return false;
        }
        if self.resident.len() >= self.max_loras.max(1) {
            let victim = self
                .resident
                .iter()
                .enumerate()
                .filter(|(_, (resident, _))| !batch.contains(resident))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(at, _)| at);
            match victim {
                Some(at) => {
                    self.resident.swap_remove(at);
                }
                // Every slot serves this batch: the scheduler's max_loras check prevents this.
                None => return false,
            }
        }
        self.resident.push((id, step));
        true
    }

    pub fn add_running(&mut self, id: LoraId) {
        self.running[usize::from(id)] += 1;
    }

    pub fn remove_running(&mut self, id: LoraId) {
        let count = &mut self.running[usize::from(id)];
        *count = count.saturating_sub(1);
    }

    /// Adapters with running requests, in registration order.
    pub fn running_names(&self) -> Vec<String> {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(id, _)| self.names[id].to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_is_lru_and_spares_the_batch() {
        let mut slots = LoraSlots::new(2);
        let a = slots.intern(&Arc::from("a")).unwrap();
        let b = slots.intern(&Arc::from("b")).unwrap();
        let c = slots.intern(&Arc::from("c")).unwrap();
        assert_eq!(slots.intern(&Arc::from("a")), Some(a));
        assert!(slots.use_in_step(a, 1, &[a]));
        assert!(slots.use_in_step(b, 2, &[b]));
        assert!(!slots.use_in_step(a, 3, &[a]));
        // b is least recently used, but it is in this batch: a goes.
        assert!(slots.use_in_step(c, 4, &[b, c]));
        assert!(slots.is_resident(b) && slots.is_resident(c) && !slots.is_resident(a));
        slots.add_running(c);
        assert_eq!(slots.running_names(), vec!["c".to_owned()]);
        slots.remove_running(c);
        assert!(slots.running_names().is_empty());
    }
}

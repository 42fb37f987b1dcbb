//! A map whose entries die on their own (a channel nobody receives on any
//! more, a weak handle whose owners left), swept of its dead entries as it
//! grows. A sweep runs when the map has doubled since the last one, so it
//! costs O(1) per insert however many entries live, where sweeping on every
//! insert or every send costs O(entries) each time.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

/// Entries in the map before its first sweep.
const FIRST_SWEEP_AT: usize = 1024;

/// A `HashMap` swept of dead entries on insert, at doubling sizes.
pub(crate) struct SweptMap<K, V> {
    entries: HashMap<K, V>,
    /// The size at which the dead entries are dropped next: twice what the
    /// last sweep kept.
    sweep_at: usize,
}

impl<K, V> Default for SweptMap<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            sweep_at: FIRST_SWEEP_AT,
        }
    }
}

impl<K: Eq + Hash, V> SweptMap<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get(key)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.remove(key)
    }

    /// Entries, dead ones since the last sweep included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts `value` at `key`, first keeping only the entries `live`
    /// accepts if the map has doubled since its last sweep.
    pub(crate) fn insert(&mut self, key: K, value: V, live: impl FnMut(&K, &mut V) -> bool) {
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(live);
            self.sweep_at = self.entries.len().saturating_mul(2).max(FIRST_SWEEP_AT);
        }
        self.entries.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_entries_are_dropped_once_the_map_doubles_and_live_ones_stay() {
        let mut map = SweptMap::default();
        let live = |k: &usize, _: &mut ()| k.is_multiple_of(10);
        for k in 0..FIRST_SWEEP_AT {
            map.insert(k, (), live);
        }
        assert_eq!(map.len(), FIRST_SWEEP_AT, "no sweep before the first size");
        map.insert(FIRST_SWEEP_AT, (), live);
        // 103 live keys (0, 10, …, 1020) kept, then the new one.
        assert_eq!(map.len(), 104);
        assert!(map.get(&1000).is_some() && map.get(&1001).is_none());
        // 100,000 inserts of dead entries: the map stays within twice what
        // lives plus the first size.
        for k in 1_000_000..1_100_000 {
            map.insert(k + 1, (), |k, _| *k < 1_000_000 && k.is_multiple_of(10));
            assert!(map.len() <= 2 * FIRST_SWEEP_AT + 1, "{}", map.len());
        }
    }
}

//! A small least-recently-used map from prompts to values.

use std::collections::HashMap;

/// Keeps at most `capacity` entries; inserting into a full map drops the entry used longest
/// ago. Lookups are a hash lookup; evicting scans the entries, which is cheap for the few
/// hundred prompts a service keeps (microseconds, against milliseconds to encode one).
#[derive(Debug)]
pub struct Lru<V> {
    capacity: usize,
    /// Value and the tick of its last use.
    entries: HashMap<String, (V, u64)>,
    tick: u64,
}

impl<V: Clone> Lru<V> {
    /// A map keeping up to `capacity` entries (0: keeps nothing).
    pub fn new(capacity: usize) -> Lru<V> {
        Lru { capacity, entries: HashMap::with_capacity(capacity.min(4096)), tick: 0 }
    }

    /// The value of `key`, now the most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = tick;
            value.clone()
        })
    }

    /// Inserts `value` under `key` unless the key is already there, and returns the value the
    /// map holds for it (the existing one if there was one), now the most recently used.
    pub fn get_or_insert(&mut self, key: &str, value: V) -> V {
        if let Some(existing) = self.get(key) {
            return existing;
        }
        if self.capacity == 0 {
            return value;
        }
        if self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
                .expect("a full map of capacity > 0 has entries");
            self.entries.remove(&oldest);
        }
        self.entries.insert(key.to_string(), (value.clone(), self.tick));
        value
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(2);
        assert_eq!(lru.get_or_insert("a", 1), 1);
        assert_eq!(lru.get_or_insert("b", 2), 2);
        assert_eq!(lru.get("a"), Some(1)); // a is now more recent than b
        assert_eq!(lru.get_or_insert("c", 3), 3); // evicts b
        assert_eq!((lru.get("b"), lru.get("a"), lru.get("c")), (None, Some(1), Some(3)));
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get_or_insert("d", 4), 4); // evicts a (c was read after it)
        assert_eq!((lru.get("a"), lru.get("c"), lru.get("d")), (None, Some(3), Some(4)));
    }

    #[test]
    fn an_existing_value_is_kept() {
        let mut lru = Lru::new(4);
        lru.get_or_insert("a", 1);
        assert_eq!(lru.get_or_insert("a", 2), 1, "the first value stays");
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut lru = Lru::new(0);
        assert_eq!(lru.get_or_insert("a", 1), 1);
        assert_eq!(lru.len(), 0);
        assert_eq!(lru.get("a"), None);
    }
}

//! A queue for lines the host drains: bounded, dropping (and counting) its oldest item when the
//! host falls behind, so a flood costs memory up to the bound and no more.

use std::collections::VecDeque;

/// At most `max` items, oldest first.
#[derive(Debug)]
pub struct Bounded<T> {
    items: VecDeque<T>,
    max: usize,
    dropped: u64,
}

impl<T> Bounded<T> {
    pub fn new(max: usize) -> Self {
        Bounded {
            items: VecDeque::new(),
            max,
            dropped: 0,
        }
    }

    /// Append `item`, dropping the oldest one if the queue is full.
    pub fn push(&mut self, item: T) {
        if self.items.len() >= self.max {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    /// Every item, oldest first; the queue is left empty.
    pub fn take(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }

    /// Items dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_are_counted() {
        let mut queue = Bounded::new(3);
        for i in 0..5 {
            queue.push(i);
        }
        assert_eq!(queue.take(), vec![2, 3, 4]);
        assert_eq!(queue.dropped(), 2);
        assert!(queue.take().is_empty());
    }
}

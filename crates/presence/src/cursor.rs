//! How far a device has acked a user's log: every `seq` up to a point, and
//! some beyond it (acks by message id come in any order). The same rules
//! run in memory and, in Lua, in Redis (`redis/cursors.lua`).

use std::collections::BTreeSet;

/// At most this many acked seqs are kept beyond the contiguous part; past
/// it the lowest are forgotten (their messages may be replayed once more).
pub const MAX_ABOVE: usize = 256;

/// The acked part of a log, for one device (or, for receipts, for all of a
/// user's devices together).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every seq up to this one is acked.
    pub up_to: u64,
    /// Acked seqs beyond `up_to + 1`.
    pub above: BTreeSet<u64>,
}

impl Cursor {
    pub fn at(up_to: u64) -> Self {
        Self { up_to, above: BTreeSet::new() }
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.up_to || self.above.contains(&seq)
    }

    /// Acks `seq`; false when it was acked already.
    pub fn ack(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.above.insert(seq);
        self.settle();
        true
    }

    /// Acks everything up to `seq`.
    pub fn ack_up_to(&mut self, seq: u64) {
        if seq > self.up_to {
            self.up_to = seq;
            self.settle();
        }
    }

    /// Takes in what `other` acked as well.
    pub fn merge(&mut self, other: &Self) {
        self.above.extend(other.above.iter().copied());
        self.up_to = self.up_to.max(other.up_to);
        self.settle();
    }

    /// Moves `up_to` over every consecutive acked seq, and bounds `above`.
    fn settle(&mut self) {
        self.above = self.above.split_off(&(self.up_to + 1));
        while self.above.first() == Some(&(self.up_to + 1)) {
            self.up_to += 1;
            self.above.pop_first();
        }
        while self.above.len() > MAX_ABOVE {
            self.above.pop_first();
        }
    }

    /// What both acked: what a device that comes new may skip, when these
    /// are the cursors of every device seen lately.
    pub fn intersect(&self, other: &Self) -> Self {
        let up_to = self.up_to.min(other.up_to);
        let above = self.above.iter().chain(&other.above).copied().filter(|&seq| seq > up_to);
        let above = above.filter(|&seq| self.contains(seq) && other.contains(seq)).collect();
        let mut both = Self { up_to, above };
        both.settle();
        both
    }

    /// The seqs `self` acks that `earlier` did not (after a cumulative
    /// ack, possibly thousands).
    pub fn newly_acked(&self, earlier: &Self) -> Vec<u64> {
        let mut seqs: Vec<u64> = (earlier.up_to + 1..=self.up_to).filter(|s| !earlier.above.contains(s)).collect();
        seqs.extend(self.above.iter().copied().filter(|s| !earlier.contains(*s)));
        seqs
    }

    /// The text form kept in Redis: `up_to` then the seqs above it,
    /// comma-separated (`"12"`, `"12,15,17"`).
    pub fn to_text(&self) -> String {
        let mut text = self.up_to.to_string();
        for seq in &self.above {
            text.push(',');
            text.push_str(&seq.to_string());
        }
        text
    }

    /// Reads [`Cursor::to_text`]; `None` when it is not of that form.
    pub fn from_text(text: &str) -> Option<Self> {
        let mut parts = text.split(',');
        let up_to = parts.next()?.parse().ok()?;
        let above = parts.map(str::parse).collect::<Result<_, _>>().ok()?;
        let mut cursor = Self { up_to, above };
        cursor.settle();
        Some(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_any_order_move_the_cursor_over_what_is_consecutive() {
        let mut cursor = Cursor::default();
        assert!(cursor.ack(2));
        assert_eq!((cursor.up_to, cursor.above.len()), (0, 1));
        assert!(cursor.ack(1));
        assert_eq!(cursor, Cursor::at(2));
        assert!(!cursor.ack(2));
        cursor.ack(5);
        cursor.ack_up_to(3);
        assert_eq!(cursor.to_text(), "3,5");
        cursor.ack(4);
        assert_eq!(cursor, Cursor::at(5));
    }

    #[test]
    fn text_round_trips_and_merges() {
        let cursor = Cursor::from_text("7,9,12").unwrap();
        assert_eq!(cursor.to_text(), "7,9,12");
        assert!(Cursor::from_text("x").is_none());
        let mut other = Cursor::from_text("8").unwrap();
        other.merge(&cursor);
        assert_eq!(other.to_text(), "9,12");
    }

    #[test]
    fn newly_acked_lists_what_the_earlier_state_did_not_hold() {
        let earlier = Cursor::from_text("3,5").unwrap();
        let later = Cursor::from_text("6,9").unwrap();
        assert_eq!(later.newly_acked(&earlier), vec![4, 6, 9]);
        assert!(earlier.newly_acked(&later).is_empty());
    }

    #[test]
    fn the_intersection_is_what_both_acked() {
        let laptop = Cursor::from_text("5,7,9").unwrap();
        let phone = Cursor::from_text("3,4,7,8").unwrap();
        assert_eq!(laptop.intersect(&phone).to_text(), "4,7");
        assert_eq!(phone.intersect(&laptop), laptop.intersect(&phone));
    }

    #[test]
    fn the_part_above_is_bounded() {
        let mut cursor = Cursor::default();
        for seq in 0..(MAX_ABOVE as u64 + 10) {
            cursor.ack(seq * 2 + 2);
        }
        assert_eq!(cursor.above.len(), MAX_ABOVE);
        assert_eq!(cursor.up_to, 0);
    }
}

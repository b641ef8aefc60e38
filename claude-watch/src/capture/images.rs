//! Which images the kernel's exec filter has a verdict on (its `IMAGES` map: not Claude Code,
//! or to report at once, see [`claude_ebpf_common::verdict`]), kept within the map's size and
//! fair between users: each non-root file owner may hold at most a quarter of it, and a full
//! book gives up the oldest image of its largest holder. Pure: it says what to add and remove;
//! [`super::Probes`] does it.
//!
//! An image judged not Claude Code enters only after discovery judged its file twice (the
//! second exec of a file it had read), so binaries that run once (a test binary a build just
//! wrote) never take room. An image given up is judged anew: its execs reach user space
//! again, without waking it.

use std::collections::{HashMap, VecDeque};

use claude_ebpf_common::ImageKey;

/// A change to make to the kernel's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add the image with the verdict (or change its verdict).
    Add(ImageKey, u32),
    /// Remove it: its execs are sent again.
    Remove(ImageKey),
}

/// The book of the kernel's `IMAGES` map.
#[derive(Debug)]
pub struct ImageBook {
    cap: usize,
    share: usize,
    /// Image → its file's owner and its verdict.
    owners: HashMap<ImageKey, (u32, u32)>,
    /// Images, oldest first.
    order: VecDeque<ImageKey>,
    /// Images per owner.
    held: HashMap<u32, usize>,
}

impl ImageBook {
    /// A book of at most `cap` images, a quarter of them per non-root owner.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            share: (cap / 4).max(1),
            owners: HashMap::new(),
            order: VecDeque::new(),
            held: HashMap::new(),
        }
    }

    /// Images in the book.
    #[must_use]
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether the book is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// An image judged `verdict`, owned by `owner`: the changes that put it in.
    pub fn offer(&mut self, image: ImageKey, owner: u32, verdict: u32) -> Vec<Change> {
        if let Some(held) = self.owners.get_mut(&image) {
            if held.1 == verdict {
                return Vec::new();
            }
            held.1 = verdict;
            return vec![Change::Add(image, verdict)];
        }
        let mut out = Vec::new();
        let over_share = owner != 0 && self.held.get(&owner).copied().unwrap_or(0) >= self.share;
        if over_share {
            out.extend(self.evict_of(owner));
        } else if self.owners.len() >= self.cap {
            let largest = self
                .held
                .iter()
                .max_by_key(|(uid, n)| (**n, **uid != 0))
                .map(|(uid, _)| *uid);
            out.extend(largest.and_then(|uid| self.evict_of(uid)));
        }
        self.owners.insert(image, (owner, verdict));
        self.order.push_back(image);
        *self.held.entry(owner).or_default() += 1;
        out.push(Change::Add(image, verdict));
        out
    }

    /// Takes `image` out (its file turned out to be Claude Code after all, or is gone). Only the
    /// tests take an image out: the daemon never does.
    #[cfg(test)]
    pub fn withdraw(&mut self, image: ImageKey) -> Option<Change> {
        let (owner, _) = self.owners.remove(&image)?;
        self.order.retain(|i| *i != image);
        self.release(owner);
        Some(Change::Remove(image))
    }

    fn evict_of(&mut self, owner: u32) -> Option<Change> {
        let at = self
            .order
            .iter()
            .position(|i| self.owners.get(i).is_some_and(|held| held.0 == owner))?;
        let image = self.order.remove(at)?;
        self.owners.remove(&image);
        self.release(owner);
        Some(Change::Remove(image))
    }

    fn release(&mut self, owner: u32) {
        if let Some(n) = self.held.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claude_ebpf_common::verdict::{NOT_CLAUDE, REPORT_NOW};

    fn img(ino: u64) -> ImageKey {
        ImageKey {
            ino,
            size: 1,
            dev: 1,
            pad: 0,
        }
    }

    #[test]
    fn an_image_is_added_once() {
        let mut b = ImageBook::new(8);
        assert_eq!(
            b.offer(img(1), 0, NOT_CLAUDE),
            [Change::Add(img(1), NOT_CLAUDE)]
        );
        assert!(b.offer(img(1), 0, NOT_CLAUDE).is_empty());
        assert_eq!(b.len(), 1);
        // A new verdict on it changes the kernel's entry, in its place.
        assert_eq!(
            b.offer(img(1), 0, REPORT_NOW),
            [Change::Add(img(1), REPORT_NOW)]
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b.withdraw(img(1)), Some(Change::Remove(img(1))));
        assert!(b.is_empty());
        assert_eq!(b.withdraw(img(1)), None);
    }

    /// One user's thousand fresh binaries take a quarter of the book, their own oldest first,
    /// and never push out root's or another user's images.
    #[test]
    fn a_user_holds_a_quarter_and_gives_up_their_own_oldest() {
        let mut b = ImageBook::new(8);
        for i in 0..4 {
            b.offer(img(100 + i), 0, NOT_CLAUDE);
        }
        b.offer(img(200), 1000, REPORT_NOW);
        for i in 0..1000 {
            let changes = b.offer(img(10_000 + i), 666, NOT_CLAUDE);
            if i >= 2 {
                assert_eq!(
                    changes,
                    [
                        Change::Remove(img(10_000 + i - 2)),
                        Change::Add(img(10_000 + i), NOT_CLAUDE)
                    ],
                    "{i}"
                );
            }
        }
        assert_eq!(b.len(), 7);
        for kept in [100, 101, 102, 103, 200] {
            assert!(b.owners.contains_key(&img(kept)), "{kept}");
        }
    }

    /// A full book makes room from its largest holder, a user's before root's.
    #[test]
    fn a_full_book_gives_up_the_largest_holders_oldest() {
        let mut b = ImageBook::new(4);
        b.offer(img(1), 0, NOT_CLAUDE);
        b.offer(img(2), 0, NOT_CLAUDE);
        b.offer(img(3), 7, NOT_CLAUDE);
        b.offer(img(4), 8, REPORT_NOW);
        assert_eq!(
            b.offer(img(5), 9, NOT_CLAUDE),
            [Change::Remove(img(1)), Change::Add(img(5), NOT_CLAUDE)]
        );
        assert_eq!(b.len(), 4);
        // Root and users 7, 8, 9 hold one each: a user's goes first.
        let changes = b.offer(img(6), 0, NOT_CLAUDE);
        assert!(
            matches!(changes[0], Change::Remove(i) if i == img(3) || i == img(4) || i == img(5)),
            "{changes:?}"
        );
    }
}

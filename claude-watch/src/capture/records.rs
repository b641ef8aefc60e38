//! Ring-buffer records: decoding (pure) and asynchronous reading.

use std::io;

use aya::maps::{MapData, RingBuf};
use claude_ebpf_common::{EventHeader, HEAD_MAX, HEADER_LEN};
use tokio::io::unix::AsyncFd;

use crate::http::pair::Record;

/// Decodes one ring-buffer record; `None` when it is shorter than its header says.
pub fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: `bytes` holds at least `HEADER_LEN` bytes and `EventHeader` is plain integers.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let captured = header.captured as usize;
    if captured > HEAD_MAX || bytes.len() < HEADER_LEN + captured {
        return None;
    }
    Some(Record {
        header,
        head: &bytes[HEADER_LEN..HEADER_LEN + captured],
    })
}

/// The ring buffer, readable from tokio.
pub struct RecordStream {
    ring: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl RecordStream {
    /// Wraps the `EVENTS` ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
        // the `RingBuf` lives, and the `AsyncFd` owns the `RingBuf`.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Records that were shorter than their header said (should stay 0).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Hands every record already in the ring to `f` without waiting; returns how many there
    /// were. Requests do not wake the reader (their responses do), so a timer calls this too.
    pub fn drain_now(&mut self, f: impl FnMut(Record<'_>)) -> usize {
        consume(self.ring.get_mut(), &mut self.malformed, f)
    }

    /// Waits until the kernel signals new records; [`Self::drain_now`] then takes them. The
    /// readiness is cleared before they are read, so none that arrive meanwhile is missed.
    pub async fn readable(&mut self) -> io::Result<()> {
        self.ring.readable_mut().await?.clear_ready();
        Ok(())
    }

    /// Waits for records and hands every available one to `f`; returns how many there were.
    pub async fn drain(&mut self, f: impl FnMut(Record<'_>)) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let n = consume(guard.get_inner_mut(), &mut self.malformed, f);
        guard.clear_ready();
        Ok(n)
    }
}

/// Hands every record in `ring` to `f`, counting those too short for their header.
fn consume(
    ring: &mut RingBuf<MapData>,
    malformed: &mut u64,
    mut f: impl FnMut(Record<'_>),
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(record) => f(record),
            None => *malformed += 1,
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_lengths() {
        let header = EventHeader {
            captured: 4,
            len: 4,
            pid: 7,
            kind: 1,
            ..EventHeader::default()
        };
        let mut bytes = vec![0u8; HEADER_LEN];
        // SAFETY: writes a plain struct into a buffer of its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header) };
        assert!(decode(&bytes).is_none(), "head bytes missing");
        bytes.extend_from_slice(b"GET ");
        let record = decode(&bytes).unwrap();
        assert_eq!((record.header.pid, record.head), (7, &b"GET "[..]));
        assert!(decode(&bytes[..10]).is_none());
        // The kernel reserves a head's record in one of three sizes: the room past the
        // captured bytes is not part of the head.
        bytes.resize(HEADER_LEN + 512, 0xAA);
        assert_eq!(decode(&bytes).unwrap().head, b"GET ");
    }
}

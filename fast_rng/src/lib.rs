//! The request paths' random numbers: which volunteers a redirect samples, the noise that
//! breaks ties between equal ones, where an announce's reply starts in the swarm and its
//! order. Nothing here needs to be unpredictable, only well spread, and it runs several
//! times a request: `thread_rng` (ChaCha, reseeded from the OS every 64 KiB of output) cost
//! more than the choice it served.

use std::cell::Cell;

use rand::RngCore;

/// wyrand (wyhash's generator): one add and one multiply per number. One state per thread,
/// seeded from the OS once.
pub struct FastRng;

thread_local! {
    static STATE: Cell<u64> = Cell::new(rand::random());
}

impl FastRng {
    /// The thread's generator (a handle: the state stays in the thread).
    pub fn for_thread() -> FastRng {
        FastRng
    }

    /// A copy of the thread's generator as it stands: it yields the numbers the thread's
    /// next draws will, without drawing them (to prefetch what they will pick).
    pub fn peek() -> PeekedRng {
        PeekedRng(STATE.with(Cell::get))
    }
}

/// One wyrand step.
fn step(state: &mut u64) -> u64 {
    let x = state.wrapping_add(0xa076_1d64_78bd_642f);
    *state = x;
    let m = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
    (m as u64) ^ ((m >> 64) as u64)
}

/// `RngCore` for a generator whose `next_u64` is given: the rest is drawn from it.
macro_rules! rng_core_from_next_u64 {
    ($rng:ty, |$this:ident| $next_u64:expr) => {
        impl RngCore for $rng {
            fn next_u64(&mut self) -> u64 {
                let $this = self;
                $next_u64
            }

            fn next_u32(&mut self) -> u32 {
                (self.next_u64() >> 32) as u32
            }

            fn fill_bytes(&mut self, dest: &mut [u8]) {
                rand_core_fill(self, dest)
            }

            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
                rand_core_fill(self, dest);
                Ok(())
            }
        }
    };
}

rng_core_from_next_u64!(FastRng, |_this| STATE.with(|s| {
    let mut x = s.get();
    let out = step(&mut x);
    s.set(x);
    out
}));

/// [`FastRng::peek`]'s detached copy of a thread's generator.
pub struct PeekedRng(u64);

rng_core_from_next_u64!(PeekedRng, |this| step(&mut this.0));

impl FastRng {
    /// The thread's generator taken out into a local for a run of draws (a shuffle draws one
    /// per element): each draw from [`FastRng`] goes through the thread-local, which the
    /// compiler will not keep in a register across calls. The state is put back when the
    /// [`HeldRng`] is dropped; no other draw on the thread may come in between, or it would
    /// repeat these numbers.
    pub fn hold() -> HeldRng {
        HeldRng(STATE.with(Cell::get))
    }
}

/// [`FastRng::hold`]'s generator.
pub struct HeldRng(u64);

rng_core_from_next_u64!(HeldRng, |this| step(&mut this.0));

impl Drop for HeldRng {
    fn drop(&mut self) {
        // `try_with`: nothing to put back into a thread that is going away.
        let _ = STATE.try_with(|s| s.set(self.0));
    }
}

fn rand_core_fill(r: &mut impl RngCore, dest: &mut [u8]) {
    for chunk in dest.chunks_mut(8) {
        let b = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn a_peek_foretells_the_next_draws_without_taking_them() {
        let mut peek = FastRng::peek();
        let foretold: Vec<usize> = (0..8).map(|_| peek.gen_range(0..1000)).collect();
        let mut r = FastRng::for_thread();
        let drawn: Vec<usize> = (0..8).map(|_| r.gen_range(0..1000)).collect();
        assert_eq!(foretold, drawn);
        // The peek took nothing: the thread's generator moved on only by its own draws.
        let mut again = FastRng::peek();
        assert_eq!(again.next_u64(), r.next_u64());
    }

    #[test]
    fn a_held_generator_goes_on_from_the_thread_and_back_into_it() {
        let mut peek = FastRng::peek();
        let foretold: Vec<u64> = (0..6).map(|_| peek.next_u64()).collect();
        let mut held = FastRng::hold();
        let first: Vec<u64> = (0..3).map(|_| held.next_u64()).collect();
        drop(held);
        let mut r = FastRng::for_thread();
        let then: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!([first, then].concat(), foretold);
    }

    #[test]
    fn spreads_evenly_and_differs_between_threads() {
        let mut r = FastRng::for_thread();
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.gen_range(0..10)] += 1;
        }
        // Each bucket within 5 % of 10,000 (a binomial sd is 95).
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        let here: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        let there = std::thread::spawn(|| {
            let mut r = FastRng::for_thread();
            (0..4).map(|_| r.next_u64()).collect::<Vec<u64>>()
        })
        .join()
        .unwrap();
        assert_ne!(here, there);
        let mut b = [0u8; 13];
        r.fill_bytes(&mut b);
        assert!(b.iter().any(|&x| x != 0));
    }
}

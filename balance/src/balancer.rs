//! The balancer's face: the registry of volunteers and the policy behind one lock, asked by
//! the redirect path which volunteers may serve a path's bytes, best first.
//!
//! A choice samples eligible volunteers (a small pool whole, a large one a few at a time:
//! the best of a few random choices balances nearly as well as the best of all, and keeps a
//! redirect's cost independent of the number of volunteers), lets the policy order them, and
//! counts the first as sent a customer. Everything else (reports, exclusions, the admin's
//! and the metrics' reads) goes through [`Balancer::registry`].

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::Rng;

use crate::policy::{Candidate, Order, Policy};
use crate::registry::{RecordsAt, Registry};

/// How many eligible volunteers the policy sees per request in a large pool. A Metalink
/// lists more sources, so it samples as many as it lists (up to [`MAX_SAMPLE`]).
pub const BEST_OF: usize = 4;

/// A pool this small is seen whole.
pub const SMALL_POOL: usize = 8;

/// Candidates a policy sees at most (a small pool whole, or a Metalink's many sources).
pub const MAX_SAMPLE: usize = 16;

/// The log target of the redirect decisions: operators turn them on with
/// `RUST_LOG=mirrorswarm_server::redirect=debug` (README, docs/operator.md), the module that
/// made them before the balancer was a crate of its own.
const DECISION_LOG: &str = "mirrorswarm_server::redirect";

/// The facts of the requested file a choice depends on.
#[derive(Debug, Clone, Copy)]
pub struct PathFacts<'a> {
    pub repo: &'a str,
    /// The path within the repository: a volunteer holding part of it must hold this file.
    pub rel: &'a str,
    /// The generation in which these bytes last changed: only volunteers holding it or a
    /// later one may serve them.
    pub changed_in: u64,
    /// The newest generation published with these bytes: the repository's current one, or
    /// a staged one that did not change them (volunteers holding a staged generation that
    /// changed the file hold other bytes).
    pub current: u64,
}

/// What a redirect asks of the volunteers: how many to name, and how many body bytes the
/// customer will draw from the first.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub sources: usize,
    pub bytes: u64,
}

/// The base URLs of the volunteers chosen for one request, best first, copied out of the
/// registry into one reused buffer. (Cloning each one's `Arc<str>` wrote a reference count
/// that every serving core shares.)
#[derive(Debug, Default)]
pub struct Chosen {
    text: String,
    ends: Vec<usize>,
}

impl Chosen {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    fn push(&mut self, url: &str) {
        self.text.push_str(url);
        self.ends.push(self.text.len());
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.text[a..b])
    }
}

/// What [`Balancer::choose`] reuses from one redirect to the next on a thread.
#[derive(Default)]
struct ChooseScratch {
    sample: Vec<usize>,
    order: Order,
}

thread_local! {
    static CHOOSE_SCRATCH: RefCell<ChooseScratch> = RefCell::new(ChooseScratch::default());
}

/// Candidates [`Balancer::choose`] samples for `want` volunteers.
fn sample_size(want: usize) -> usize {
    want.clamp(BEST_OF, MAX_SAMPLE)
}

pub struct Balancer {
    registry: Mutex<Registry>,
    /// Where the registry's records lie, read without its lock for prefetch hints.
    records_at: Arc<RecordsAt>,
    policy: Box<dyn Policy>,
}

impl Balancer {
    pub fn new(registry: Registry, policy: Box<dyn Policy>) -> Balancer {
        Balancer {
            records_at: registry.records_at(),
            registry: Mutex::new(registry),
            policy,
        }
    }

    /// The registry under its lock, for everything but the choice: reports, exclusions,
    /// the admin's and the metrics' reads. The data stays consistent if a holder panicked
    /// (every writer replaces whole values), so a poisoned lock is taken as it is.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn policy(&self) -> &dyn Policy {
        &*self.policy
    }

    /// Hint the CPU to load the records [`Self::choose`] will sample for `want` volunteers
    /// (the thread's generator is peeked, not drawn from), before the path's lookup: the
    /// lookup's cache misses and the records' then overlap instead of following one
    /// another. Nothing may draw from the thread's generator between this and `choose`, or
    /// the hint is wasted.
    pub fn prefetch(&self, want: usize) {
        let mut peek = fast_rng::FastRng::peek();
        self.records_at
            .prefetch_sample((sample_size(want), SMALL_POOL), &mut |n| {
                peek.gen_range(0..n)
            });
    }

    /// Base URLs of up to `ask.sources` volunteers that may serve the file `path` describes,
    /// best first (the policy's order, for a download of `ask.bytes`), into `chosen`; the
    /// first is counted as sent that customer, for those bytes. None chosen: the origin.
    pub fn choose(&self, path: PathFacts<'_>, ask: Ask, now: Instant, chosen: &mut Chosen) {
        let want = ask.sources;
        chosen.clear();
        let mut rng = fast_rng::FastRng::for_thread();
        let mut reg = self.registry();
        let k = sample_size(want);
        // The sample's and the order's buffers are the thread's, reused: this runs for every
        // redirect.
        let ChooseScratch {
            mut sample,
            mut order,
        } = CHOOSE_SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
        reg.sample(
            path.repo,
            path.rel,
            path.changed_in,
            path.current,
            now,
            (k, SMALL_POOL),
            &mut |n| rng.gen_range(0..n),
            &mut sample,
        );
        sample.truncate(MAX_SAMPLE);
        // A policy that knows exact live counts (the lab's oracle) has the models corrected
        // by them before it orders.
        if self.policy.knows_live_customers() {
            for &i in &sample {
                if let Some(customers) = self.policy.live_customers(&reg.at(i).id) {
                    reg.correct_customers(i, customers, now);
                }
            }
        }
        let mut open = [(0u32, 0usize); MAX_SAMPLE];
        for (o, &i) in open.iter_mut().zip(&sample) {
            *o = reg.open_redirects(i, now);
        }
        // On the stack: the sample is at most `MAX_SAMPLE` (a vector was a malloc and a free
        // per redirect). Pushed into place, not collected: a collected `ArrayVec` (2 KiB) was
        // built and then copied whole into this frame (a twelfth of the choice's perf
        // samples).
        let mut cands = arrayvec::ArrayVec::<Candidate, MAX_SAMPLE>::new();
        for (&i, &(unreported, recent)) in sample.iter().zip(&open) {
            let v = reg.at(i);
            cands.push(Candidate {
                load: v.load,
                model: v.model.view(now),
                issued_since_report: unreported,
                issued_total: v.issued_total,
                issued_recent: recent,
                age: now.saturating_duration_since(v.joined),
                observed_speed: v.observed_speed(),
                usage: v.usage(),
            });
        }
        self.policy
            .order_into(&cands, ask.bytes, &mut rng, &mut order);
        drop(cands);
        let best_first = &order.best_first;
        if tracing::enabled!(target: DECISION_LOG, tracing::Level::DEBUG) {
            let (_, excluded) =
                reg.candidates(path.repo, path.rel, path.changed_in, path.current, now);
            let why: Vec<String> = excluded
                .iter()
                .map(|(v, e)| format!("{}: {e}", v.id))
                .collect();
            tracing::debug!(
                target: DECISION_LOG,
                repo = %path.repo, path = path.rel, changed_in = path.changed_in,
                policy = self.policy.name(),
                chosen = best_first.first().map(|&i| reg.at(sample[i]).id.as_str()).unwrap_or("origin"),
                sampled = sample.len(), excluded = ?why,
                "redirect decision"
            );
        }
        for &at in best_first.iter().take(want).filter_map(|&i| sample.get(i)) {
            chosen.push(&reg.at(at).url);
        }
        if let Some(&first) = best_first.first().and_then(|&i| sample.get(i)) {
            reg.note_redirect_at(first, ask.bytes, now);
        }
        drop(reg);
        CHOOSE_SCRATCH.with(|b| *b.borrow_mut() = ChooseScratch { sample, order });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracker::mirror::MirrorReport;

    use super::*;
    use crate::policy::by_name;

    fn report(id: &str, generation: u64, customers: u32) -> MirrorReport {
        crate::registry::tests::report(id, 1, generation, customers)
    }

    fn ask(sources: usize) -> Ask {
        Ask { sources, bytes: 1 }
    }

    fn balancer(policy: &str, reports: &[MirrorReport], now: Instant) -> Balancer {
        let mut reg = Registry::new(Duration::from_secs(30));
        for r in reports {
            reg.report("deb", r, false, now).unwrap();
        }
        Balancer::new(reg, by_name(policy, Duration::ZERO).unwrap())
    }

    fn facts(changed_in: u64) -> PathFacts<'static> {
        PathFacts {
            repo: "deb",
            rel: "pool/a.deb",
            changed_in,
            current: 3,
        }
    }

    #[test]
    fn only_volunteers_holding_the_bytes_are_named_and_the_first_is_counted() {
        let now = Instant::now();
        let reports = [report("old", 1, 0), report("new", 3, 0)];
        let b = balancer("feedback-connections", &reports, now);
        let mut chosen = Chosen::default();
        let ask = Ask {
            sources: 4,
            bytes: 1000,
        };
        b.choose(facts(2), ask, now, &mut chosen);
        assert_eq!(chosen.iter().collect::<Vec<_>>(), ["http://new.test"]);
        assert_eq!(b.registry().get("new").unwrap().issued_total, 1);
        assert_eq!(b.registry().get("old").unwrap().issued_total, 0);
        // Bytes changed after everyone's generation: nobody, so the origin.
        b.choose(facts(4), ask, now, &mut chosen);
        assert!(chosen.is_empty());
    }

    #[test]
    fn a_choice_names_at_most_what_was_asked_and_spreads_customers() {
        let now = Instant::now();
        let reports: Vec<_> = (0..6).map(|i| report(&format!("v{i}"), 3, 0)).collect();
        let b = balancer("feedback-connections", &reports, now);
        let mut chosen = Chosen::default();
        for _ in 0..12 {
            b.choose(facts(1), ask(1), now, &mut chosen);
            assert_eq!(chosen.iter().count(), 1);
        }
        // Counted redirects steer the next ones elsewhere: no volunteer took them all.
        let most = b.registry().all().map(|v| v.issued_total).max().unwrap();
        assert!(most < 12, "one volunteer took {most} of 12");
        b.choose(facts(1), ask(3), now, &mut chosen);
        assert_eq!(chosen.iter().count(), 3);
    }

    #[test]
    fn a_quarantined_volunteer_is_never_chosen() {
        let now = Instant::now();
        let reports = [report("bad", 3, 0), report("good", 3, 0)];
        let b = balancer("feedback", &reports, now);
        b.registry().set_quarantined("bad", true);
        let mut chosen = Chosen::default();
        // Fewer than the good one's capacity (4): at capacity it would get none either.
        for _ in 0..3 {
            b.choose(facts(1), ask(1), now, &mut chosen);
            assert_eq!(chosen.iter().collect::<Vec<_>>(), ["http://good.test"]);
        }
    }
}

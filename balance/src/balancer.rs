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

use crate::ladder::{Customer, Ladder, Tier};
use crate::policy::{Candidate, Order, Policy};
use crate::reach::Reach;
use crate::registry::{Exclusion, Load, RecordsAt, Registry, VolunteerLive};

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
    /// Near first, unless near is full (used for customers whose place is asked about).
    ladder: Ladder,
}

/// One volunteer as [`Balancer::explain`] saw it for a customer.
#[derive(Debug, Clone)]
pub struct Considered {
    pub id: String,
    pub url: String,
    /// How near the customer it is (`None`: no place known to compare).
    pub tier: Option<Tier>,
    /// Seconds one more download of the file would add there, by its link's model.
    pub wait: Option<f64>,
    /// The extra round trips its tier costs over the nearest one that has room, seconds.
    pub extra: f64,
    pub load: Load,
    pub verdict: Verdict,
}

/// Where a volunteer stood in a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its place in the order, 0 the one the customer is sent to.
    Ranked(usize),
    /// Eligible, but the policy gave it no place: it has no room.
    NoRoom,
    Excluded(Exclusion),
}

impl Balancer {
    pub fn new(registry: Registry, policy: Box<dyn Policy>) -> Balancer {
        Balancer {
            records_at: registry.records_at(),
            registry: Mutex::new(registry),
            policy,
            ladder: Ladder::default(),
        }
    }

    /// With the operator's estimates of the round trips to each tier.
    pub fn with_ladder(mut self, ladder: Ladder) -> Balancer {
        self.ladder = ladder;
        self
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
    ///
    /// `customer`: where the customer is, if the server works that out: the sample draws
    /// from its nearer tiers first, and the [`Ladder`] orders the tiers over the policy's
    /// order. `None`: by load alone, as when nothing is configured to place anyone (a private
    /// volunteer then takes nobody).
    pub fn choose(
        &self,
        path: PathFacts<'_>,
        ask: Ask,
        customer: Option<&Customer>,
        now: Instant,
        chosen: &mut Chosen,
    ) {
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
            customer,
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
            cands.push(candidate(reg.at(i), (unreported, recent), now));
        }
        self.policy
            .order_into(&cands, ask.bytes, &mut rng, &mut order);
        if let Some(c) = customer.filter(|_| reg.places_known()) {
            let tiers: arrayvec::ArrayVec<Tier, MAX_SAMPLE> = sample
                .iter()
                .map(|&i| crate::ladder::tier(c, &reg.at(i).place))
                .collect();
            self.ladder.order(
                &mut order.best_first,
                |i| tiers[i],
                |i| wait(&cands[i], ask.bytes),
                ask.bytes,
            );
        }
        drop(cands);
        let best_first = &order.best_first;
        if tracing::enabled!(target: DECISION_LOG, tracing::Level::DEBUG) {
            let (_, excluded) = reg.candidates(
                path.repo,
                path.rel,
                path.changed_in,
                path.current,
                customer,
                now,
            );
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
        let need = customer.map_or(Reach::ANY, |c| c.reach);
        for &at in best_first.iter().take(want).filter_map(|&i| sample.get(i)) {
            chosen.push(reg.at(at).urls.for_customer(need));
        }
        if let Some(&first) = best_first.first().and_then(|&i| sample.get(i)) {
            reg.note_redirect_at(first, ask.bytes, now);
        }
        drop(reg);
        CHOOSE_SCRATCH.with(|b| *b.borrow_mut() = ChooseScratch { sample, order });
        // A customer that came over IPv6 and found nobody reachable over it goes to one over
        // IPv4 before the origin (see `Reach::over_ipv4_instead`).
        if chosen.is_empty() {
            if let Some(c) = customer {
                if let Some(reach) = c.reach.over_ipv4_instead() {
                    let over_v4 = Customer { reach, ..*c };
                    self.choose(path, ask, Some(&over_v4), now, chosen);
                }
            }
        }
    }

    /// Every volunteer as a choice for `customer` would see it (the whole pool, not a
    /// sample; nothing counted): its tier, modelled wait and load, and where it ranks or why
    /// it was left out. For the mirror list: an admin asking why a customer went where it did.
    pub fn explain(
        &self,
        path: PathFacts<'_>,
        bytes: u64,
        customer: Option<&Customer>,
        now: Instant,
    ) -> Vec<Considered> {
        let reg = self.registry();
        let need = customer.map_or(Reach::ANY, |c| c.reach);
        let (eligible, excluded) = reg.candidates(
            path.repo,
            path.rel,
            path.changed_in,
            path.current,
            customer,
            now,
        );
        let cands: Vec<Candidate> = eligible
            .iter()
            .map(|&i| candidate(reg.at(i), reg.open_redirects(i, now), now))
            .collect();
        let mut order = Order::default();
        self.policy.order_into(
            &cands,
            bytes,
            &mut fast_rng::FastRng::for_thread(),
            &mut order,
        );
        // Tiers only where some volunteer has a place to compare with.
        let located = customer.filter(|_| reg.places_known());
        let tier_of =
            |i: usize| located.map(|c| crate::ladder::tier(c, &reg.at(eligible[i]).place));
        if located.is_some() {
            self.ladder.order(
                &mut order.best_first,
                |i| tier_of(i).unwrap_or(Tier::World),
                |i| wait(&cands[i], bytes),
                bytes,
            );
        }
        let nearest = order.best_first.iter().filter_map(|&i| tier_of(i)).min();
        let mut out: Vec<Considered> = eligible
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let v = reg.at(i);
                let tier = tier_of(k);
                Considered {
                    id: v.id.clone(),
                    url: v.urls.for_customer(need).to_string(),
                    tier,
                    wait: wait(&cands[k], bytes),
                    extra: match (nearest, tier) {
                        (Some(n), Some(t)) => self.ladder.extra_secs(n, t, bytes),
                        _ => 0.0,
                    },
                    load: v.load,
                    verdict: match order.best_first.iter().position(|&o| o == k) {
                        Some(rank) => Verdict::Ranked(rank),
                        None => Verdict::NoRoom,
                    },
                }
            })
            .collect();
        out.sort_by_key(|c| match c.verdict {
            Verdict::Ranked(r) => r,
            _ => usize::MAX,
        });
        out.extend(excluded.into_iter().map(|(v, e)| Considered {
            id: v.id.clone(),
            url: v.urls.for_customer(need).to_string(),
            tier: located.map(|c| crate::ladder::tier(c, &v.place)),
            wait: None,
            extra: 0.0,
            load: v.load,
            verdict: Verdict::Excluded(e),
        }));
        out
    }
}

/// What a policy sees of volunteer `v`, with the redirects to it still open
/// ([`Registry::open_redirects`]).
#[inline]
fn candidate(v: &VolunteerLive, (unreported, recent): (u32, usize), now: Instant) -> Candidate<'_> {
    Candidate {
        load: v.load,
        model: v.model.view(now),
        issued_since_report: unreported,
        issued_total: v.issued_total,
        issued_recent: recent,
        age: now.saturating_duration_since(v.joined),
        observed_speed: v.observed_speed(),
        usage: v.usage(),
    }
}

/// The seconds one more download of `bytes` would add at a candidate, by its link's model,
/// slowed by what the server's checks observed of it; `None` where its link is undeclared.
fn wait(c: &Candidate, bytes: u64) -> Option<f64> {
    let w = c.model.marginal_wait(bytes)?;
    Some(w / c.observed_speed.clamp(0.01, 1.0))
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
        b.choose(facts(2), ask, None, now, &mut chosen);
        assert_eq!(chosen.iter().collect::<Vec<_>>(), ["http://new.test"]);
        assert_eq!(b.registry().get("new").unwrap().issued_total, 1);
        assert_eq!(b.registry().get("old").unwrap().issued_total, 0);
        // Bytes changed after everyone's generation: nobody, so the origin.
        b.choose(facts(4), ask, None, now, &mut chosen);
        assert!(chosen.is_empty());
    }

    #[test]
    fn a_choice_names_at_most_what_was_asked_and_spreads_customers() {
        let now = Instant::now();
        let reports: Vec<_> = (0..6).map(|i| report(&format!("v{i}"), 3, 0)).collect();
        let b = balancer("feedback-connections", &reports, now);
        let mut chosen = Chosen::default();
        for _ in 0..12 {
            b.choose(facts(1), ask(1), None, now, &mut chosen);
            assert_eq!(chosen.iter().count(), 1);
        }
        // Counted redirects steer the next ones elsewhere: no volunteer took them all.
        let most = b.registry().all().map(|v| v.issued_total).max().unwrap();
        assert!(most < 12, "one volunteer took {most} of 12");
        b.choose(facts(1), ask(3), None, now, &mut chosen);
        assert_eq!(chosen.iter().count(), 3);
    }

    fn at_site(site: u16) -> crate::ladder::VolunteerPlace {
        crate::ladder::VolunteerPlace {
            place: locate::place::Place {
                site: Some(site),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn customer_at(addr: &str, site: u16) -> Customer {
        Customer {
            addr: addr.parse().unwrap(),
            place: locate::place::Place {
                site: Some(site),
                ..Default::default()
            },
            reach: Reach::ANY,
        }
    }

    /// A report with a declared 1 MB/s link (so waits are modelled) and `customers` of 4.
    fn linked(id: &str, seq: u64, customers: u32) -> MirrorReport {
        MirrorReport {
            link_bps: 1_000_000,
            ..crate::registry::tests::report(id, seq, 3, customers)
        }
    }

    /// `near` at the customer's site 1 serving `near_customers`, `far` idle at site 2.
    fn near_and_far(near_customers: u32, now: Instant) -> (Balancer, Customer) {
        let b = balancer(
            "feedback",
            &[linked("far", 1, 0), linked("near", 1, near_customers)],
            now,
        );
        b.registry().set_place("near", at_site(1));
        b.registry().set_place("far", at_site(2));
        (b, customer_at("10.1.0.9", 1))
    }

    #[test]
    fn a_customer_goes_near_first_and_far_when_near_is_full() {
        let now = Instant::now();
        let (b, c) = near_and_far(0, now);
        let mut chosen = Chosen::default();
        let ask = Ask {
            sources: 2,
            bytes: 4096,
        };
        b.choose(facts(1), ask, Some(&c), now, &mut chosen);
        assert_eq!(
            chosen.iter().collect::<Vec<_>>(),
            ["http://near.test", "http://far.test"]
        );
        // Near full (4 of 4): far.
        b.registry()
            .report("deb", &linked("near", 2, 4), false, now)
            .unwrap();
        b.choose(facts(1), ask, Some(&c), now, &mut chosen);
        assert_eq!(chosen.iter().next(), Some("http://far.test"));
        // The explanation agrees, and says why near was passed over.
        let seen = b.explain(facts(1), 4096, Some(&c), now);
        assert_eq!(seen[0].id, "far");
        assert_eq!(seen[0].verdict, Verdict::Ranked(0));
        assert_eq!(seen[0].tier, Some(Tier::World));
        let near = seen.iter().find(|v| v.id == "near").unwrap();
        assert_eq!(
            (near.tier, near.verdict),
            (Some(Tier::Site), Verdict::NoRoom)
        );
    }

    #[test]
    fn a_busy_near_volunteer_loses_to_an_idle_far_one_only_by_more_than_the_round_trips() {
        let now = Instant::now();
        // Near serves 3 downloads on its 1 MB/s link: one more 4 KiB one waits a little,
        // less than three round trips across the world: near.
        let (b, c) = near_and_far(3, now);
        let mut chosen = Chosen::default();
        let small = Ask {
            sources: 1,
            bytes: 4096,
        };
        b.choose(facts(1), small, Some(&c), now, &mut chosen);
        assert_eq!(chosen.iter().next(), Some("http://near.test"));
        // A 50 MB download would wait for three others' there: far, idle, is sooner even
        // with the extra round trips.
        let large = Ask {
            sources: 1,
            bytes: 50_000_000,
        };
        b.choose(facts(1), large, Some(&c), now, &mut chosen);
        assert_eq!(chosen.iter().next(), Some("http://far.test"));
    }

    #[test]
    fn customers_go_only_to_urls_they_can_follow() {
        let now = Instant::now();
        let plain = MirrorReport {
            url: "http://192.0.2.10:8081".into(),
            ..report("plain", 1, 0)
        };
        let both = MirrorReport {
            url: "http://192.0.2.11:8081".into(),
            other_urls: vec![
                "https://192.0.2.11:8443".into(),
                "http://[2001:db8::11]:8081".into(),
            ],
            ..report("both", 1, 0)
        };
        let b = balancer("request-counting", &[plain, both], now);
        let mut chosen = Chosen::default();
        let mut seen = |secure: bool, addr: &str| {
            let c = Customer {
                reach: Reach::customer(secure, addr.parse().unwrap()),
                ..customer_at(addr, 1)
            };
            let mut urls = std::collections::BTreeSet::new();
            for _ in 0..40 {
                b.choose(facts(1), ask(1), Some(&c), now, &mut chosen);
                urls.extend(chosen.iter().map(str::to_string));
            }
            urls.into_iter().collect::<Vec<_>>()
        };
        // Over HTTPS: only the https URL, never an http:// one.
        assert_eq!(seen(true, "192.0.2.1"), ["https://192.0.2.11:8443"]);
        // Over plain HTTP: a volunteer's http URL.
        let plain_urls = seen(false, "192.0.2.1");
        assert!(!plain_urls.is_empty());
        assert!(
            plain_urls
                .iter()
                .all(|u| ["http://192.0.2.10:8081", "http://192.0.2.11:8081"].contains(&u.as_str())),
            "{plain_urls:?}"
        );
        // Over IPv6: the one with an IPv6 URL.
        assert_eq!(seen(false, "2001:db8::1"), ["http://[2001:db8::11]:8081"]);
        // Over HTTPS and IPv6, with no https URL over IPv6: over IPv4 instead.
        assert_eq!(seen(true, "2001:db8::1"), ["https://192.0.2.11:8443"]);
        let c = Customer {
            reach: Reach::customer(true, "192.0.2.1".parse().unwrap()),
            ..customer_at("192.0.2.1", 1)
        };
        let why = b.explain(facts(1), 1, Some(&c), now);
        let plain = why.iter().find(|v| v.id == "plain").unwrap();
        assert_eq!(plain.verdict, Verdict::Excluded(Exclusion::Unreachable));
    }

    #[test]
    fn a_private_volunteer_takes_only_its_own_networks_customers() {
        let now = Instant::now();
        let private = MirrorReport {
            nets: "10.1.0.0/16".into(),
            private: true,
            ..linked("campus", 1, 0)
        };
        let b = balancer("feedback", &[private], now);
        let mut chosen = Chosen::default();
        // Before the server worked out its place: nobody.
        b.choose(
            facts(1),
            ask(1),
            Some(&customer_at("10.1.0.9", 1)),
            now,
            &mut chosen,
        );
        assert!(chosen.is_empty());
        b.registry().set_place(
            "campus",
            crate::ladder::VolunteerPlace {
                nets: Arc::from(vec!["10.1.0.0/16".parse().unwrap()]),
                private: true,
                ..Default::default()
            },
        );
        for (addr, served) in [
            ("10.1.0.9", true),
            ("10.2.0.9", false),
            ("192.0.2.1", false),
        ] {
            b.choose(
                facts(1),
                ask(1),
                Some(&customer_at(addr, 1)),
                now,
                &mut chosen,
            );
            assert_eq!(!chosen.is_empty(), served, "{addr}");
        }
        b.choose(facts(1), ask(1), None, now, &mut chosen);
        assert!(chosen.is_empty(), "a customer nobody placed");
        let seen = b.explain(facts(1), 1, Some(&customer_at("10.2.0.9", 1)), now);
        assert_eq!(seen[0].verdict, Verdict::Excluded(Exclusion::Private));
    }

    #[test]
    fn a_sample_near_a_customer_is_bounded_however_many_groups_hold_it() {
        let now = Instant::now();
        let reports: Vec<_> = (0..300)
            .map(|i| linked(&format!("v{i:03}"), 1, 0))
            .collect();
        let b = balancer("feedback", &reports, now);
        // Five netblocks and a site all holding the customer, six volunteers in each (small
        // groups, taken whole): more than a choice looks at.
        for g in 0..6u16 {
            for k in 0..6 {
                let place = crate::ladder::VolunteerPlace {
                    place: locate::place::Place {
                        site: (g == 5).then_some(7),
                        ..Default::default()
                    },
                    nets: if g < 5 {
                        Arc::from(vec![format!("10.7.0.0/{}", 16 + g).parse().unwrap()])
                    } else {
                        Arc::from(vec![])
                    },
                    private: false,
                };
                b.registry().set_place(&format!("v{:03}", g * 6 + k), place);
            }
        }
        let c = customer_at("10.7.0.1", 7);
        let mut out = Vec::new();
        let mut rng = fast_rng::FastRng::for_thread();
        b.registry().sample(
            "deb",
            "pool/a.deb",
            1,
            3,
            now,
            (BEST_OF, SMALL_POOL),
            Some(&c),
            &mut |n| rng.gen_range(0..n),
            &mut out,
        );
        assert!(out.len() <= MAX_SAMPLE, "{}", out.len());
        assert!(out.iter().all(|&i| i < 36), "only near ones: {out:?}");
    }

    #[test]
    fn in_a_large_pool_the_near_volunteers_are_sampled() {
        let now = Instant::now();
        let reports: Vec<_> = (0..200)
            .map(|i| linked(&format!("v{i:03}"), 1, 0))
            .collect();
        let b = balancer("feedback", &reports, now);
        b.registry().set_place("v123", at_site(7));
        let c = customer_at("10.7.0.1", 7);
        let mut chosen = Chosen::default();
        for _ in 0..3 {
            b.choose(facts(1), ask(1), Some(&c), now, &mut chosen);
            assert_eq!(chosen.iter().next(), Some("http://v123.test"));
        }
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
            b.choose(facts(1), ask(1), None, now, &mut chosen);
            assert_eq!(chosen.iter().collect::<Vec<_>>(), ["http://good.test"]);
        }
    }
}

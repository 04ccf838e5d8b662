//! Balancing policies, chosen by name in config.
//!
//! A policy sees only the eligible volunteers (the registry has already excluded stale,
//! behind and draining ones) and orders them: the first gets the redirect, the next few are
//! offered as alternatives. An empty order sends the customer to the origin.

use crate::link_model::LinkView;
use crate::registry::Load;
use rand::{Rng, RngCore};

/// What a policy may know of one eligible volunteer.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Last reported workload.
    pub load: Load,
    /// Its downloads as they probably stand now (the report, the redirects since, drained at
    /// its declared link's rate; corrected by exact counts if the policy has them, see
    /// [`Policy::knows_live_customers`]).
    pub model: LinkView<'a>,
    /// Redirects the server issued since that report (within the connection window).
    pub issued_since_report: u32,
    /// Redirects the server ever issued to it (since this server started).
    pub issued_total: u64,
    /// Redirects issued within the least-connections window.
    pub issued_recent: usize,
    /// Time since it (re)joined: for slow start.
    pub age: std::time::Duration,
    /// How fast the server's own checks found it, against its peers: 1.0 unless it served
    /// them markedly slower than the median (down to 0.1). Reports can lie; this cannot.
    pub observed_speed: f64,
    /// The share of its declared uplink it has been sending lately, customers and sync
    /// together, by its reports (see `VolunteerLive::usage`).
    pub usage: f64,
}

impl Candidate<'_> {
    fn capacity(&self) -> f64 {
        f64::from(self.load.capacity.max(1))
    }
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Indices into `cands`, best first, for a download of `bytes`, into `out` (cleared
    /// first). Empty: no volunteer should take this request.
    fn order_into(&self, cands: &[Candidate], bytes: u64, rng: &mut dyn RngCore, out: &mut Order);
    /// [`Self::order_into`] a new buffer.
    fn order(&self, cands: &[Candidate], bytes: u64, rng: &mut dyn RngCore) -> Vec<usize> {
        let mut out = Order::default();
        self.order_into(cands, bytes, rng, &mut out);
        out.best_first
    }
    /// Whether this policy knows how many customers volunteers serve right now from
    /// elsewhere than their reports (the lab's `oracle`, which measures the product's
    /// policies against exact knowledge). Asked once per choice, so that the product's
    /// policies, which know only reports, cost nothing per candidate.
    fn knows_live_customers(&self) -> bool {
        false
    }
    /// The customers volunteer `id` serves right now, if known: its model is corrected to
    /// that before the candidates are ordered. Asked only if [`Self::knows_live_customers`].
    fn live_customers(&self, _id: &str) -> Option<u32> {
        None
    }
}

/// Build a policy by its configured name. `slow_start`: how long a (re)joining volunteer's
/// share takes to grow to its full capacity (the feedback policies).
pub fn by_name(name: &str, slow_start: std::time::Duration) -> Option<Box<dyn Policy>> {
    let ramp = SlowStart(slow_start);
    match name {
        "feedback" => Some(Box::new(Feedback { ramp })),
        "feedback-connections" => Some(Box::new(FeedbackConnections { ramp })),
        "least-connections" => Some(Box::new(LeastConnections)),
        "request-counting" => Some(Box::new(RequestCounting)),
        _ => None,
    }
}

/// A policy's answer, and its scratch: kept by the caller from one request to the next, so
/// ordering a redirect's candidates allocates nothing.
#[derive(Debug, Default)]
pub struct Order {
    /// Indices into the candidates, best first.
    pub best_first: Vec<usize>,
    scored: Vec<(f64, usize)>,
    /// What `feedback` derives from each candidate, once per candidate.
    ramped: Vec<Ramped>,
}

impl Order {
    /// `best_first` = the candidates that `keep` admits, by `score`, lowest first; ties keep
    /// input order (ids are sorted). Each score is computed once.
    fn sort_by(
        &mut self,
        cands: &[Candidate],
        keep: impl Fn(&Candidate) -> bool,
        score: impl Fn(&Candidate) -> f64,
    ) {
        self.scored.clear();
        self.scored.extend(
            cands
                .iter()
                .enumerate()
                .filter(|(_, c)| keep(c))
                .map(|(i, c)| (score(c), i)),
        );
        self.take_scored();
    }

    /// `best_first` = what is in `scored`, lowest score first (stable).
    fn take_scored(&mut self) {
        self.scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.best_first.clear();
        self.best_first.extend(self.scored.iter().map(|&(_, i)| i));
    }
}

fn all(_: &Candidate) -> bool {
    true
}

/// Apache `byrequests`, the paper's baseline: spread requests in proportion to capacity,
/// blind to how long each one keeps a volunteer busy.
pub struct RequestCounting;

impl Policy for RequestCounting {
    fn name(&self) -> &'static str {
        "request-counting"
    }
    fn order_into(&self, cands: &[Candidate], _: u64, _: &mut dyn RngCore, out: &mut Order) {
        out.sort_by(cands, all, |c| c.issued_total as f64 / c.capacity());
    }
}

/// Least connections as the server alone can see them: redirects issued within a recent
/// window stand in for open connections. Blind to sync traffic and to slow transfers.
pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }
    fn order_into(&self, cands: &[Candidate], _: u64, _: &mut dyn RngCore, out: &mut Order) {
        out.sort_by(cands, all, |c| c.issued_recent as f64 / c.capacity());
    }
}

/// Slow start: a volunteer that (re)joined counts with part of its capacity, a tenth at once
/// and all of it after the configured time, so a newcomer whose report says "idle" is not
/// flooded before its first reports show what it can take.
#[derive(Debug, Clone, Copy)]
struct SlowStart(std::time::Duration);

impl SlowStart {
    fn share(self, c: &Candidate) -> f64 {
        if self.0.is_zero() {
            return 1.0;
        }
        (0.1 + 0.9 * c.age.as_secs_f64() / self.0.as_secs_f64()).min(1.0)
    }

    /// What a candidate can do relative to what it says: slow start (its `share`), cut
    /// further by how slow the server observed it.
    fn cut(share: f64, c: &Candidate) -> f64 {
        share * c.observed_speed.clamp(0.01, 1.0)
    }

    /// Customers it may take at once while it ramps up (to `share` of its capacity).
    fn capacity(share: f64, c: &Candidate) -> u32 {
        ((f64::from(c.load.capacity.max(1)) * share).ceil() as u32).max(1)
    }
}

/// The paper's feedback, kept for comparison: each volunteer's last reported customer and
/// sync connections plus the redirects issued since that report, relative to declared
/// capacity; best of two random choices, because always taking the apparent minimum of stale
/// data herds onto one node. Also what `feedback` falls back to where a volunteer's uplink is
/// undeclared.
pub struct FeedbackConnections {
    ramp: SlowStart,
}

impl FeedbackConnections {
    /// The load it would have with one more customer, relative to its effective capacity.
    /// The "+1" makes two idle volunteers compare by capacity instead of tying at zero.
    fn score(&self, c: &Candidate) -> f64 {
        let busy = f64::from(c.load.customer_conns)
            + f64::from(c.load.sync_conns)
            + f64::from(c.issued_since_report)
            + 1.0;
        busy / (c.capacity() * SlowStart::cut(self.ramp.share(c), c))
    }

    fn has_headroom(&self, c: &Candidate) -> bool {
        c.load.customer_conns.saturating_add(c.issued_since_report)
            < SlowStart::capacity(self.ramp.share(c), c)
    }
}

impl Policy for FeedbackConnections {
    fn name(&self) -> &'static str {
        "feedback-connections"
    }
    fn order_into(&self, cands: &[Candidate], _: u64, rng: &mut dyn RngCore, out: &mut Order) {
        // Those with headroom, by score; then the best of two random ones of them is moved
        // to the front.
        out.sort_by(cands, |c| self.has_headroom(c), |c| self.score(c));
        // The open ones in input order (ascending index), to draw from as before.
        let n = out.best_first.len();
        let nth_open = |k: usize| {
            (0..cands.len())
                .filter(|&i| self.has_headroom(&cands[i]))
                .nth(k)
                .unwrap_or(0)
        };
        let first = match n {
            0 | 1 => return,
            n => {
                let a = nth_open(rng.gen_range(0..n));
                let mut b = nth_open(rng.gen_range(0..n - 1));
                if b == a {
                    b = nth_open(n - 1);
                }
                let (sa, sb) = (self.score(&cands[a]), self.score(&cands[b]));
                if sb < sa || (sb == sa && rng.gen_bool(0.5)) {
                    b
                } else {
                    a
                }
            }
        };
        if let Some(at) = out.best_first.iter().position(|&i| i == first) {
            out.best_first[..=at].rotate_right(1);
        }
    }
}

/// The default: send the customer where it adds the least waiting, its own and that of the
/// customers already there. Each volunteer's
/// [`LinkModel`](crate::link_model::LinkModel) knows its declared uplink, the sync
/// traffic it reported and the downloads it probably serves now (its last report plus
/// the redirects since, drained at the rates the link gives them), so between two reports
/// the server neither herds onto whoever looked idle (it counts its own redirects) nor
/// starves a volunteer whose customers have long finished (it drains them). Sync uploads
/// that want less than a fair share leave the rest of the link to customers, which counting
/// connections cannot see.
///
/// Slow start and the speed the server's checks observed scale a candidate's cost up; a
/// volunteer whose modelled customers fill its declared capacity gets none. Where any
/// candidate's uplink is undeclared, the costs would not compare: it counts connections
/// instead, as [`FeedbackConnections`].
pub struct Feedback {
    ramp: SlowStart,
}

impl Feedback {
    /// `slow_start`: how long a (re)joining volunteer's share takes to grow to its capacity.
    pub fn new(slow_start: std::time::Duration) -> Feedback {
        Feedback {
            ramp: SlowStart(slow_start),
        }
    }
}

/// How strongly `feedback` evens out what volunteers give. A volunteer donates its uplink,
/// and the paper's measure of a fair split (Fig. 18) is each one's network use, sync
/// included. At part load, least waiting alone keeps customers off links that carry sync
/// while any other link is free, so those links give less and the free ones more (±16 % at
/// 50 % load in the loopback study). So a candidate that has been using a larger share of
/// its uplink than those it is weighed against has its cost scaled by
/// `exp(EVEN_USAGE × (1 − their use now) × (its share − their mean share))`: the shares
/// averaged over a few seconds of reports, the use now by the server's model of each link.
///
/// That trades a little waiting for an even split, and only where the waits are close: at
/// half load (links about 0.65 used), between an empty link and one whose customer would
/// wait twice as long, shares about ln 2 / 5.6 ≈ 0.12 apart decide. The `1 − use now` fades
/// it out as the links fill: when all are nearly full there is no spare uplink to even out.
/// It is the use now, not the averaged shares, because a surge after a quiet spell is when
/// it matters: the averages still remember who carried sync while the others were idle.
/// With a constant strength (6), or one faded by the averages or by the last reports, the
/// loopback study's mean at full load rose by a tenth to a fifth, the links that had been
/// idle taking more of the surge. When all links are nearly idle, the shares hardly differ
/// and the cost is the waiting.
const EVEN_USAGE: f64 = 16.0;

/// What slow start makes of one candidate, for [`Feedback`]: derived once per choice, as
/// every step of the choice asks it again.
#[derive(Debug, Clone, Copy)]
struct Ramped {
    /// [`SlowStart::cut`].
    cut: f64,
    /// Its modelled customers leave room under its (ramped) capacity.
    headroom: bool,
    /// Its share of uplink use is weighed: not while slow start still holds it back. A
    /// (re)joining volunteer's short history says little, and it would look like the one
    /// that has given least and be flooded.
    evens: bool,
}

impl Feedback {
    fn ramped(&self, c: &Candidate) -> Ramped {
        let share = self.ramp.share(c);
        let headroom = c.model.customers() < SlowStart::capacity(share, c) as usize;
        Ramped {
            cut: SlowStart::cut(share, c),
            headroom,
            evens: headroom && share >= 1.0,
        }
    }

    /// The factor [`EVEN_USAGE`] puts on a candidate's cost, against `weighed`.
    fn evening(c: &Candidate, r: Ramped, weighed: Weighed) -> f64 {
        if !r.evens {
            return 1.0;
        }
        let strength = EVEN_USAGE * (1.0 - weighed.use_now).clamp(0.0, 1.0);
        if strength == 0.0 {
            // Every link weighed is full: the waits decide (and no `exp` per candidate).
            return 1.0;
        }
        (strength * (c.usage - weighed.share)).exp()
    }

    /// The mean averaged share of the candidates that are weighed, and the mean use now of
    /// all of them (a full one is full, weighed or not).
    fn weighed(cands: &[Candidate], ramped: &[Ramped]) -> Weighed {
        let (share, n) = cands
            .iter()
            .zip(ramped)
            .filter(|(_, r)| r.evens)
            .fold((0.0, 0u32), |(s, n), (c, _)| (s + c.usage, n + 1));
        let use_now: f64 = cands.iter().map(in_use_now).sum();
        Weighed {
            share: share / f64::from(n.max(1)),
            use_now: use_now / cands.len().max(1) as f64,
        }
    }
}

/// How much of a candidate's uplink is probably in use right now, by the server's own model:
/// all of it while it serves a customer (customers take what sync leaves), else what its
/// sync sent. The server's model, not the last report, because it knows at once of the
/// customers it just sent: a surge fills it within a few redirects, a report a second later.
fn in_use_now(c: &Candidate) -> f64 {
    if c.model.customers() > 0 {
        return 1.0;
    }
    if c.load.link_bps == 0 {
        return 0.0;
    }
    (c.load.sync_bps as f64 / c.load.link_bps as f64).min(1.0)
}

/// What [`Feedback::evening`] weighs a candidate against.
#[derive(Debug, Clone, Copy)]
struct Weighed {
    share: f64,
    use_now: f64,
}

impl Policy for Feedback {
    fn name(&self) -> &'static str {
        "feedback"
    }
    fn order_into(&self, cands: &[Candidate], bytes: u64, rng: &mut dyn RngCore, out: &mut Order) {
        if !cands.iter().all(|c| c.model.known()) {
            return FeedbackConnections { ramp: self.ramp }.order_into(cands, bytes, rng, out);
        }
        let mut ramped = std::mem::take(&mut out.ramped);
        ramped.clear();
        ramped.extend(cands.iter().map(|c| self.ramped(c)));
        let weighed = Self::weighed(cands, &ramped);
        out.scored.clear();
        out.scored.extend(
            cands
                .iter()
                .zip(&ramped)
                .enumerate()
                .filter(|(_, (_, r))| r.headroom)
                .filter_map(|(i, (c, &r))| {
                    let wait = c.model.marginal_wait(bytes)?;
                    // Equal volunteers tie exactly; a little noise spreads them at random.
                    let noise = 1.0 + 1e-9 * rng.gen::<f64>();
                    Some((wait * noise * Self::evening(c, r, weighed) / r.cut, i))
                }),
        );
        out.ramped = ramped;
        out.take_scored();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link_model::{LinkModel, Reported};
    use rand::SeedableRng;
    use std::time::{Duration, Instant};

    /// A volunteer as a test describes it: its report, and its model built from that report.
    struct Vol {
        load: Load,
        model: LinkModel,
        since: u32,
        total: u64,
        age: Duration,
        speed: f64,
        usage: f64,
    }

    fn vol(conns: u32, sync: u32, sync_bps: u64, link: u64, cap: u32, t: Instant) -> Vol {
        let load = Load {
            customer_conns: conns,
            sync_conns: sync,
            upload_bps: 0,
            capacity: cap,
            sync_bps,
            link_bps: link,
        };
        let mut model = LinkModel::default();
        model.reconcile(
            Reported {
                customers: conns,
                sync_conns: sync,
                sync_bps,
                link_bps: link,
            },
            100_000,
            t,
        );
        Vol {
            load,
            model,
            since: 0,
            total: 0,
            age: Duration::from_secs(3600),
            speed: 1.0,
            usage: 0.0,
        }
    }

    impl Vol {
        fn redirected(&mut self, bytes: u64, t: Instant) {
            self.since += 1;
            self.total += 1;
            self.model.add(bytes, t);
        }
    }

    fn cands(v: &[Vol]) -> Vec<Candidate<'_>> {
        v.iter()
            .map(|v| Candidate {
                load: v.load,
                model: v.model.view_as_moved(),
                issued_since_report: v.since,
                issued_total: v.total,
                issued_recent: v.total as usize,
                age: v.age,
                observed_speed: v.speed,
                usage: v.usage,
            })
            .collect()
    }

    fn policy(name: &str) -> Box<dyn Policy> {
        by_name(name, Duration::from_secs(10)).unwrap()
    }

    /// Send `n` customers of `bytes` one after the other, at one instant, as the redirector
    /// would: each counted where it went before the next is placed. Returns where they went.
    fn place(p: &dyn Policy, v: &mut [Vol], n: usize, bytes: u64, t: Instant) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hits = vec![0; v.len()];
        for _ in 0..n {
            let Some(&first) = p.order(&cands(v), bytes, &mut rng).first() else {
                break;
            };
            v[first].redirected(bytes, t);
            hits[first] += 1;
        }
        hits
    }

    #[test]
    fn names_resolve() {
        for n in config::POLICY_NAMES {
            assert_eq!(by_name(n, Default::default()).unwrap().name(), *n);
        }
        assert!(by_name("nope", Default::default()).is_none());
        assert!(!policy("feedback").knows_live_customers());
    }

    #[test]
    fn request_counting_spreads_by_capacity() {
        let t = Instant::now();
        let mut v = [vol(0, 0, 0, 0, 10, t), vol(0, 0, 0, 0, 1, t)];
        v[0].total = 10;
        v[1].total = 3;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(RequestCounting.order(&cands(&v), 1, &mut rng), [0, 1]);
    }

    #[test]
    fn feedback_connections_never_picks_the_busier_of_two() {
        // With two candidates best-of-two always compares both.
        let t = Instant::now();
        let v = [vol(1, 5, 0, 0, 8, t), vol(1, 0, 0, 0, 8, t)];
        let p = policy("feedback-connections");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            assert_eq!(p.order(&cands(&v), 1, &mut rng)[0], 1);
        }
    }

    #[test]
    fn feedback_connections_counts_redirects_since_report_and_respects_capacity() {
        let t = Instant::now();
        let p = policy("feedback-connections");
        let mut v = [vol(0, 0, 0, 0, 4, t), vol(2, 0, 0, 0, 4, t)];
        v[0].since = 3;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(p.order(&cands(&v), 1, &mut rng)[0], 1);
        let mut full = [vol(2, 0, 0, 0, 4, t), vol(4, 0, 0, 0, 4, t)];
        full[0].since = 2;
        assert!(p.order(&cands(&full), 1, &mut rng).is_empty());
    }

    #[test]
    fn feedback_spreads_over_equal_volunteers() {
        let t = Instant::now();
        for name in ["feedback", "feedback-connections"] {
            let mut v: Vec<Vol> = (0..4).map(|_| vol(0, 0, 0, 1_000_000, 1000, t)).collect();
            let hits = place(&*policy(name), &mut v, 400, 100_000, t);
            assert!(hits.iter().all(|&h| h >= 80), "{name}: {hits:?}");
        }
    }

    #[test]
    fn feedback_places_by_the_waiting_it_adds() {
        let t = Instant::now();
        // A 1 MB/s volunteer whose 4 sync uploads want 0.4 MB/s in all, no customers, and an
        // idle one with two customers. Counting connections (5 against 3) prefers the second;
        // a new customer would get 0.6 MB/s from the first and a third of 1 MB/s from the
        // second (and slow its two customers down).
        let v = [
            vol(0, 4, 400_000, 1_000_000, 64, t),
            vol(2, 0, 0, 1_000_000, 64, t),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(
            policy("feedback").order(&cands(&v), 100_000, &mut rng)[0],
            0
        );
        assert_eq!(
            policy("feedback-connections").order(&cands(&v), 100_000, &mut rng)[0],
            1
        );
        // Greedy sync (each upload took a full share) is a connection like any other: a
        // fifth of the link against half of it beside one other customer.
        let greedy = [
            vol(0, 4, 1_000_000, 1_000_000, 64, t),
            vol(1, 0, 0, 1_000_000, 64, t),
        ];
        assert_eq!(
            policy("feedback").order(&cands(&greedy), 100_000, &mut rng)[0],
            1
        );
    }

    #[test]
    fn feedback_evens_out_what_volunteers_give_where_waits_are_close() {
        let t = Instant::now();
        // An empty link whose sync takes half of it, and an empty free one: a customer
        // waits twice as long on the first. `usage`: the share of its link each sent over the
        // last few seconds.
        let mut v = [
            vol(0, 4, 500_000, 1_000_000, 64, t),
            vol(0, 0, 0, 1_000_000, 64, t),
        ];
        let p = policy("feedback");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut first = |v: &[Vol]| p.order(&cands(v), 256_000, &mut rng)[0];
        fn sent(v: &mut [Vol], usage: [f64; 2]) {
            for (x, u) in v.iter_mut().zip(usage) {
                x.usage = u;
            }
        }
        // Having given alike, or the synced one a little more or less: the faster link.
        for usage in [[0.6, 0.6], [0.7, 0.6], [0.6, 0.64]] {
            sent(&mut v, usage);
            assert_eq!(first(&v), 1, "{usage:?}");
        }
        // The free one has been sending much more (it took every customer): the other,
        // though its customer waits longer.
        sent(&mut v, [0.5, 0.7]);
        assert_eq!(first(&v), 0);
        // As far apart when both links are in use now (each serves a customer), there is no
        // spare to even out: the waits decide.
        let mut full = [
            vol(1, 4, 500_000, 1_000_000, 64, t),
            vol(1, 0, 0, 1_000_000, 64, t),
        ];
        sent(&mut full, [0.5, 0.7]);
        assert_eq!(first(&full), 1);
        // Where the wait is far worse, what they gave cannot outweigh it: a link with eight
        // customers against an empty one.
        let mut crowded = [
            vol(8, 0, 0, 1_000_000, 64, t),
            vol(0, 0, 0, 1_000_000, 64, t),
        ];
        sent(&mut crowded, [0.5, 0.7]);
        assert_eq!(first(&crowded), 1);
        // Nor does a newcomer's short history make it the favourite: slow start holds it
        // back as it would without the evening out.
        let mut joining = [
            vol(0, 0, 0, 1_000_000, 64, t),
            vol(0, 0, 0, 1_000_000, 64, t),
        ];
        sent(&mut joining, [0.9, 0.0]);
        joining[1].age = Duration::from_secs(1);
        assert_eq!(first(&joining), 0);
    }

    #[test]
    fn feedback_drains_the_customers_it_sent() {
        let t = Instant::now();
        let mut v = [
            vol(0, 0, 0, 1_000_000, 64, t),
            vol(1, 0, 0, 1_000_000, 64, t),
        ];
        for _ in 0..3 {
            v[0].redirected(100_000, t);
        }
        let p = policy("feedback");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Three just sent to the first: the second, with one, is better now.
        assert_eq!(p.order(&cands(&v), 100_000, &mut rng)[0], 1);
        // Half a second later the first one's three 100 kB downloads are done; the second's
        // customer, of a size the model does not know, may still be going.
        let later = t + Duration::from_millis(500);
        for x in &mut v {
            x.model.advance(later);
        }
        assert_eq!(v[0].model.customers(), 0);
        assert_eq!(p.order(&cands(&v), 100_000, &mut rng)[0], 0);
    }

    #[test]
    fn feedback_counts_connections_where_an_uplink_is_undeclared() {
        let t = Instant::now();
        // The first would be better by bandwidth, but the second declared no uplink.
        let v = [vol(0, 4, 400_000, 1_000_000, 64, t), vol(2, 0, 0, 0, 64, t)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20 {
            assert_eq!(policy("feedback").order(&cands(&v), 1, &mut rng)[0], 1);
        }
    }

    #[test]
    fn feedback_respects_capacity() {
        let t = Instant::now();
        let mut v = [vol(3, 0, 0, 1_000_000, 4, t), vol(4, 0, 0, 1_000_000, 4, t)];
        v[0].redirected(1_000_000, t);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert!(policy("feedback").order(&cands(&v), 1, &mut rng).is_empty());
    }

    #[test]
    fn a_joining_volunteer_is_ramped_up_not_flooded() {
        let t = Instant::now();
        for name in ["feedback", "feedback-connections"] {
            // 19% of its capacity at one second: at most 4 of its 20 slots while it ramps up.
            let mut v = vec![
                vol(0, 0, 0, 1_000_000, 20, t),
                vol(0, 0, 0, 1_000_000, 20, t),
            ];
            v[0].age = Duration::from_secs(1);
            let hits = place(&*policy(name), &mut v, 20, 1_000_000, t);
            assert!(
                hits[0] <= 4,
                "{name}: {} of 20 went to the volunteer that just joined",
                hits[0]
            );
        }
    }

    #[test]
    fn between_two_reports_feedback_spreads() {
        let t = Instant::now();
        // Between two reports, every request sees the same stale numbers: the lab's
        // `least-loaded` sends all 40 to one volunteer (its own test).
        let make = || -> Vec<Vol> { (0..4).map(|i| vol(i, 0, 0, 1_000_000, 64, t)).collect() };
        for name in ["feedback", "feedback-connections"] {
            let spread = place(&*policy(name), &mut make(), 40, 100_000, t);
            assert!(spread.iter().all(|&n| n >= 5), "{name}: {spread:?}");
        }
    }

    #[test]
    fn a_volunteer_observed_slow_gets_a_smaller_share_whatever_it_reports() {
        let t = Instant::now();
        for name in ["feedback", "feedback-connections"] {
            // Both report no connections; the server's checks found one ten times slower.
            let mut v = vec![
                vol(0, 0, 0, 1_000_000, 200, t),
                vol(0, 0, 0, 1_000_000, 200, t),
            ];
            v[0].speed = 0.1;
            let hits = place(&*policy(name), &mut v, 110, 100_000, t);
            assert!(
                hits[0] <= 15,
                "{name}: {} of 110 went to the slow volunteer",
                hits[0]
            );
        }
    }
}

//! What a volunteer's uplink is probably doing right now, between two of its reports.
//!
//! A report says how many customers a volunteer serves, how many sync uploads share its link
//! and how fast they went, and how fast the link is. The server adds what the report cannot
//! know yet: the customers it redirected since. This model keeps those downloads as a fluid
//! queue, the way TCP flows share a link (each active flow gets an equal share, sync uploads
//! that want less than a share leave the rest to customers), and drains them at the rates
//! the link gives them. So between reports the server knows not only how many customers it
//! sent, but which of them have probably finished.
//!
//! From that it answers the question a balancing policy asks: how much customer waiting does
//! one more download of `n` bytes add here, its own time included. The model is corrected by
//! every report; an undeclared link (rate 0) leaves it unused.

use std::collections::VecDeque;
use std::time::Instant;

/// Downloads beyond this are not modelled (the oldest is forgotten): bounded memory whatever
/// a flood of redirects does.
const MAX_FLOWS: usize = 4096;

/// A sync upload that got at least this share of a fair split took what the link gave it
/// (it would take more); one below it wanted no more than it got.
const GREEDY_SHARE: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct LinkModel {
    /// Bytes/s of the uplink customers and sync share (0: undeclared, no model).
    link: f64,
    /// How many customer downloads' worth of the link the sync uploads take when they take
    /// what it gives them ([`sync_weight`]).
    sync_weight: f64,
    /// Bytes/s the sync uploads want together at most; `None`: as much as they get.
    sync_cap: Option<f64>,
    /// Bytes every active download has received since the model's origin: all active flows
    /// advance equally, so one counter serves them all.
    served: f64,
    /// Each download's `served` value at which it is complete, ascending.
    finish: VecDeque<f64>,
    at: Option<Instant>,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            link: 0.0,
            sync_weight: 0.0,
            sync_cap: None,
            served: 0.0,
            finish: VecDeque::new(),
            at: None,
        }
    }
}

/// What the latest report said, as the model needs it.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    pub customers: u32,
    pub sync_conns: u32,
    /// Bytes/s the sync uploads sent together over the last interval.
    pub sync_bps: u64,
    pub link_bps: u64,
}

/// How many customer downloads' worth of the link the sync uploads take when they take
/// what it gives them: one each, as TCP flows share a link, and at least one while sync sent
/// anything. A report's rate covers the last second while its count is of one instant: a
/// seeder between two torrents reported no connection while it had sent 400 kB/s, and the
/// model then left its link wholly to customers.
fn sync_weight(r: &Reported) -> f64 {
    let conns = f64::from(r.sync_conns);
    if r.sync_bps > 0 {
        conns.max(1.0)
    } else {
        conns
    }
}

impl LinkModel {
    /// Whether the volunteer declared its link, so the model's times mean anything.
    pub fn known(&self) -> bool {
        self.link > 0.0
    }

    /// Downloads it probably serves right now.
    pub fn customers(&self) -> usize {
        self.finish.len()
    }

    /// Bytes/s each of `m ≥ 1` customer downloads gets.
    fn per_flow(&self, m: usize) -> f64 {
        let m = m as f64;
        let w = self.sync_weight;
        let fair = self.link / (m + w);
        match self.sync_cap {
            Some(cap) if w > 0.0 && cap < w * fair => (self.link - cap) / m,
            _ => fair,
        }
    }

    /// Where the downloads stand at `now`, without moving the model there: how many of the
    /// oldest have finished since, and what every one still going has received.
    fn progress(&self, now: Instant) -> Progress {
        let done = Progress {
            finished: 0,
            served: self.served,
        };
        let (Some(at), true) = (self.at, self.known()) else {
            return done;
        };
        let mut p = done;
        let mut dt = now.saturating_duration_since(at).as_secs_f64();
        while dt > 0.0 {
            let Some(&first) = self.finish.get(p.finished) else {
                break;
            };
            let rate = self.per_flow(self.finish.len() - p.finished);
            let need = (first - p.served).max(0.0) / rate;
            if need <= dt {
                p.served = first;
                p.finished += 1;
                dt -= need;
            } else {
                p.served += rate * dt;
                dt = 0.0;
            }
        }
        p
    }

    /// Move the model to `now`: downloads progress, and those done are dropped.
    pub fn advance(&mut self, now: Instant) {
        let p = self.progress(now);
        self.at = Some(self.at.map_or(now, |at| now.max(at)));
        self.finish.drain(..p.finished);
        self.served = p.served;
        if self.finish.is_empty() {
            // Nothing in flight: restart the counter, so it never grows large enough to lose
            // precision.
            self.served = 0.0;
        }
    }

    /// The model as it stands at `now`, read without moving it: what a policy weighs. (A
    /// candidate only looked at is not written to: on all cores, each write moved its cache
    /// lines to the writing core, four candidates a redirect.)
    pub fn view(&self, now: Instant) -> LinkView<'_> {
        LinkView {
            model: self,
            progress: self.progress(now),
        }
    }

    /// Start loading the downloads' finishing points (kept apart from the model), which a
    /// [`Self::view`] reads next.
    pub fn prefetch(&self) {
        let (front, _) = self.finish.as_slices();
        crate::prefetch::lines(front.first().unwrap_or(&self.served));
    }

    /// [`Self::view`] at the time the model was last moved to.
    pub fn view_as_moved(&self) -> LinkView<'_> {
        LinkView {
            model: self,
            progress: Progress {
                finished: 0,
                served: self.served,
            },
        }
    }

    /// A customer was just sent here for `bytes`.
    pub fn add(&mut self, bytes: u64, now: Instant) {
        self.advance(now);
        if !self.known() {
            // Nothing would ever drain them: the policies count connections instead.
            return;
        }
        if self.finish.len() >= MAX_FLOWS {
            self.finish.pop_front();
        }
        self.insert(self.served + bytes.max(1) as f64);
    }

    fn insert(&mut self, tag: f64) {
        let at = self.finish.partition_point(|&f| f <= tag);
        self.finish.insert(at, tag);
    }

    /// Correct the model with a report: its link and sync traffic as said, and as many
    /// downloads as it counts. Extra modelled downloads are taken to be those nearest their
    /// end (they have finished); customers the model does not know of (sent by someone else,
    /// or lost from it) are given `typical_bytes` still to go.
    pub fn reconcile(&mut self, r: Reported, typical_bytes: u64, now: Instant) {
        self.advance(now);
        self.link = r.link_bps as f64;
        self.sync_weight = 0.0;
        self.sync_cap = None;
        if self.known() {
            self.sync_weight = sync_weight(&r);
            let w = self.sync_weight;
            // What a fair split would have given sync beside the customers reported; taking
            // markedly less, it wanted no more.
            let fair = w * self.link / (f64::from(r.customers) + w);
            if w > 0.0 && (r.sync_bps as f64) < GREEDY_SHARE * fair {
                self.sync_cap = Some(r.sync_bps as f64);
            }
        }
        let want = (r.customers as usize).min(MAX_FLOWS);
        while self.finish.len() > want {
            self.finish.pop_front();
        }
        while self.finish.len() < want {
            self.insert(self.served + typical_bytes.max(1) as f64);
        }
    }

    /// A customer count known from elsewhere than a report: as [`Self::reconcile`], for the
    /// count alone.
    pub fn set_customers(&mut self, customers: u32, typical_bytes: u64, now: Instant) {
        let r = Reported {
            customers,
            sync_conns: 0,
            sync_bps: 0,
            link_bps: self.link as u64,
        };
        let sync = (self.sync_weight, self.sync_cap);
        self.reconcile(r, typical_bytes, now);
        (self.sync_weight, self.sync_cap) = sync;
    }

    /// [`LinkView::marginal_wait`] as the model was last moved.
    pub fn marginal_wait(&self, bytes: u64) -> Option<f64> {
        self.view_as_moved().marginal_wait(bytes)
    }
}

/// How far the downloads have got since the model was last moved.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The oldest this many have finished.
    finished: usize,
    /// What each one still going has received (in the model's `served` units).
    served: f64,
}

/// A [`LinkModel`] read as it stands at some instant, without moving it there.
#[derive(Debug, Clone, Copy)]
pub struct LinkView<'a> {
    model: &'a LinkModel,
    progress: Progress,
}

impl LinkView<'_> {
    /// Whether the volunteer declared its link, so the model's times mean anything.
    pub fn known(&self) -> bool {
        self.model.known()
    }

    /// Downloads it probably serves at that instant.
    pub fn customers(&self) -> usize {
        self.model.finish.len() - self.progress.finished
    }

    /// Seconds of customer waiting one more download of `bytes` would add, summed over every
    /// download here, its own included, if nobody else arrived: what routing it here costs.
    /// `None` if the link is undeclared.
    pub fn marginal_wait(&self, bytes: u64) -> Option<f64> {
        if !self.known() {
            return None;
        }
        let new = bytes.max(1) as f64;
        Some(self.total_wait(Some(new)) - self.total_wait(None))
    }

    /// Sum of the completion times of every modelled download (and `extra` remaining bytes
    /// more), at the model's rates, with no more arrivals: over each stretch between two
    /// completions, every download still going waits for the whole stretch.
    fn total_wait(&self, extra: Option<f64>) -> f64 {
        let model = self.model;
        let served = self.progress.served;
        let n = self.customers() + usize::from(extra.is_some());
        let mut remaining = model
            .finish
            .iter()
            .skip(self.progress.finished)
            .map(|&f| (f - served).max(0.0))
            .peekable();
        let mut extra = extra;
        let mut prev = 0.0;
        let mut total = 0.0;
        for left in (1..=n).rev() {
            // The next to finish: the smaller of the next modelled download and the extra one.
            let next = match (remaining.peek().copied(), extra) {
                (Some(r), Some(e)) if e < r => {
                    extra = None;
                    e
                }
                (Some(r), _) => {
                    remaining.next();
                    r
                }
                (None, Some(e)) => {
                    extra = None;
                    e
                }
                (None, None) => break,
            };
            total += (next - prev) * left as f64 / model.per_flow(left);
            prev = next;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn model(customers: u32, sync_conns: u32, sync_bps: u64, link: u64, t: Instant) -> LinkModel {
        let mut m = LinkModel::default();
        m.reconcile(
            Reported {
                customers,
                sync_conns,
                sync_bps,
                link_bps: link,
            },
            100_000,
            t,
        );
        m
    }

    #[test]
    fn downloads_drain_at_the_link_rate() {
        let t = Instant::now();
        let mut m = model(0, 0, 0, 1_000_000, t);
        m.add(500_000, t);
        m.add(500_000, t);
        // Two share 1 MB/s: both done after 1 s, not before.
        m.advance(t + Duration::from_millis(990));
        assert_eq!(m.customers(), 2);
        m.advance(t + Duration::from_millis(1010));
        assert_eq!(m.customers(), 0);
    }

    #[test]
    fn a_short_download_finishes_first_and_frees_its_share() {
        let t = Instant::now();
        let mut m = model(0, 0, 0, 1_000_000, t);
        m.add(100_000, t);
        m.add(900_000, t);
        // 0.2 s for the short one at half the link, then 0.8 s alone at all of it.
        m.advance(t + Duration::from_millis(210));
        assert_eq!(m.customers(), 1);
        m.advance(t + Duration::from_millis(990));
        assert_eq!(m.customers(), 1);
        m.advance(t + Duration::from_millis(1010));
        assert_eq!(m.customers(), 0);
    }

    #[test]
    fn sync_that_wants_little_leaves_the_rest_to_customers() {
        let t = Instant::now();
        // 4 sync uploads sent 0.4 MB/s in all on a 1 MB/s link with no customers: they wanted
        // no more (a fair share was 250 kB/s each).
        let capped = model(0, 4, 400_000, 1_000_000, t);
        assert_eq!(capped.sync_cap, Some(400_000.0));
        // A new customer gets the 0.6 MB/s left: 1 MB alone takes 1/0.6 s.
        let w = capped.marginal_wait(1_000_000).unwrap();
        assert!((w - 1.0 / 0.6).abs() < 1e-9, "{w}");
        // Greedy sync (a full share each) leaves a fifth to one customer.
        let greedy = model(0, 4, 1_000_000, 1_000_000, t);
        assert_eq!(greedy.sync_cap, None);
        let w = greedy.marginal_wait(1_000_000).unwrap();
        assert!((w - 5.0).abs() < 1e-9, "{w}");
    }

    fn report(customers: u32, conns: u32, sync_bps: u64) -> Reported {
        Reported {
            customers,
            sync_conns: conns,
            sync_bps,
            link_bps: 1_000_000,
        }
    }

    #[test]
    fn sync_that_sent_counts_even_with_no_connection_left() {
        // A seeder between torrents: no connection at the instant of the report, 400 kB/s
        // over its last second. That is one flow, not none.
        assert_eq!(sync_weight(&report(0, 0, 400_000)), 1.0);
        let t = Instant::now();
        let mut m = LinkModel::default();
        m.reconcile(report(0, 0, 400_000), 100_000, t);
        // It wanted less than the half a fair split gives it: a customer gets the rest.
        assert_eq!(m.sync_cap, Some(400_000.0));
        assert!((m.per_flow(1) - 600_000.0).abs() < 1e-6);
        // Greedy, it takes a customer's share.
        m.reconcile(report(0, 0, 950_000), 100_000, t);
        assert_eq!(m.sync_cap, None);
        assert!((m.per_flow(1) - 500_000.0).abs() < 1e-6);
        // With no sync at all the link is the customers'.
        assert_eq!(sync_weight(&report(0, 0, 0)), 0.0);
        m.reconcile(report(0, 0, 0), 100_000, t);
        assert!((m.per_flow(1) - 1e6).abs() < 1e-6);
        // Connections count one each.
        assert_eq!(sync_weight(&report(2, 3, 300_000)), 3.0);
    }

    #[test]
    fn the_cost_counts_the_delay_to_those_already_there() {
        let t = Instant::now();
        let idle = model(0, 0, 0, 1_000_000, t);
        assert!((idle.marginal_wait(1_000_000).unwrap() - 1.0).abs() < 1e-9);
        let mut one = model(0, 0, 0, 1_000_000, t);
        one.add(1_000_000, t);
        // Both take 2 s now: its own 2 s plus the 1 s the other now waits longer.
        assert!((one.marginal_wait(1_000_000).unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn reports_correct_the_model() {
        let t = Instant::now();
        let mut m = model(0, 0, 0, 1_000_000, t);
        for _ in 0..5 {
            m.add(1_000_000, t);
        }
        // The volunteer says two: the three nearest their end are taken as done.
        m.reconcile(
            Reported {
                customers: 2,
                sync_conns: 0,
                sync_bps: 0,
                link_bps: 1_000_000,
            },
            100_000,
            t,
        );
        assert_eq!(m.customers(), 2);
        // It says seven: five it did not know of are added.
        m.set_customers(7, 100_000, t);
        assert_eq!(m.customers(), 7);
    }

    #[test]
    fn an_undeclared_link_gives_no_estimate() {
        let t = Instant::now();
        let mut m = model(3, 0, 0, 0, t);
        assert!(!m.known());
        assert_eq!(m.marginal_wait(1000), None);
        m.add(1000, t);
        assert_eq!(
            m.customers(),
            3,
            "nothing is modelled that could never drain"
        );
    }

    #[test]
    fn the_model_stays_bounded() {
        let t = Instant::now();
        let mut m = model(0, 0, 0, 1, t);
        for _ in 0..(MAX_FLOWS + 10) {
            m.add(1_000_000, t);
        }
        assert_eq!(m.customers(), MAX_FLOWS);
    }

    #[test]
    fn a_view_reads_what_moving_the_model_would_give() {
        let t = Instant::now();
        let mut m = model(1, 1, 100_000, 1_000_000, t);
        for (k, bytes) in [100_000u64, 400_000, 2_000_000].into_iter().enumerate() {
            m.add(bytes, t + Duration::from_millis(50 * k as u64));
        }
        for ms in [0u64, 120, 400, 900, 3000, 10_000] {
            let now = t + Duration::from_millis(100 + ms);
            let (customers, wait) = {
                let v = m.view(now);
                (v.customers(), v.marginal_wait(300_000).unwrap())
            };
            let mut moved = m.clone();
            moved.advance(now);
            assert_eq!(customers, moved.customers(), "at +{ms} ms");
            let expected = moved.marginal_wait(300_000).unwrap();
            assert!(
                (wait - expected).abs() < 1e-9,
                "at +{ms} ms: {wait} vs {expected}"
            );
        }
        // The view moved nothing.
        assert_eq!(m.customers(), 4);
    }
}

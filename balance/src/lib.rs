//! Balancing: which volunteer a customer is sent to.
//!
//! Everything here is synchronous and knows nothing of HTTP: the server resolves a request's
//! path, asks this crate for an order of volunteers, and writes the answer.
//!
//! - [`balancer`]: the face: a choice for a path, and the registry for everything else.
//! - [`registry`]: which volunteer may serve what (held generation, exclusions with their
//!   reasons), its reported load, and what it was sent since.
//! - [`ladder`]: near first, unless near is full: a customer's and a volunteer's tier, and
//!   the order of the tiers over the policy's.
//! - [`link_model`]: a volunteer's downloads as they probably stand between two reports.
//! - [`recent`]: redirects within the last connection window, counted in slices.
//! - [`prefetch`]: loading the records a redirect is about to read.
//! - [`reach`]: which of a volunteer's URLs a customer can follow (https, address family).
//! - [`policy`]: the balancing policies, chosen by name.

pub mod balancer;
pub mod ladder;
pub mod link_model;
pub mod policy;
pub mod prefetch;
pub mod reach;
pub mod recent;
pub mod registry;

pub use balancer::{Ask, Balancer, Chosen, Considered, PathFacts, Verdict};
pub use ladder::{Customer, Ladder, Tier, VolunteerPlace};
pub use reach::{Reach, Urls};

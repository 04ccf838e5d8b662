//! server
pub mod sample_repo;

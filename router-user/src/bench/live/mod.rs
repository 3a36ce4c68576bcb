//! `switchyard bench live`: routers side by side on real processes over loopback.
pub mod loadgen;

//! The host's duties around the jobs: why and when it stops ([`stop`], [`notices`]),
//! its disk ([`disk`]), its [`git`] mirrors and cache volume ([`cache`]), the pool's [`secrets`] and the
//! per-job role [`credentials`], what its containers use ([`cgroups`]), and what it
//! tells [`systemd`].

pub mod archive;
pub mod cache;
pub mod caches;
pub mod cgroups;
pub mod credentials;
pub mod disk;
pub mod forwarder;
pub mod git;
pub mod http;
pub mod notices;
pub mod secrets;
pub mod stop;
pub mod systemd;

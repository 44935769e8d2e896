//! The commands other than `run` (which is [`crate::agent::run`]): `exec`, `submit`,
//! `cancel`, `check` and `seal`.

pub mod cancel;
pub mod check;
pub mod exec;
pub mod seal;
pub mod submit;

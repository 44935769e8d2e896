//! The commands other than `run` (which is [`crate::agent::run`]): `exec`, `submit`,
//! `cancel`, `logs`, `check` and `seal`.

pub mod cancel;
pub mod check;
pub mod exec;
pub mod logs;
pub mod seal;
pub mod submit;

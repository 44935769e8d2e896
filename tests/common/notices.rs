//! The `[imds]` section of an agent watching a metadata simulator.

use super::imds::ImdsSim;

pub fn imds_config(sim: &ImdsSim, extra: &str) -> String {
    format!(
        "[imds]\nenabled = true\nendpoint = \"{}\"\npoll_ms = 200\n{extra}",
        sim.url
    )
}

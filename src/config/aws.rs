//! `[aws]`: what every AWS client shares.

use toml::Table;

use super::reader::Reader;

#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    pub region: Option<String>,
    /// A local emulator (moto). Never set in production.
    pub endpoint_url: Option<String>,
}

impl AwsConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "aws");
        let aws = AwsConfig {
            region: r.opt_string(&mut section, "region"),
            endpoint_url: r.opt_url(&mut section, "endpoint_url"),
        };
        r.finish(section);
        aws
    }
}

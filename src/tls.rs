//! TLS for every HTTPS client of the agent: rustls with ring's cryptography, for
//! the AWS SDK's client and for reqwest's (the webhook, the record's presigned
//! URLs, EC2's credentials endpoint).
//!
//! ring rather than the SDK's default aws-lc: one provider instead of two, 1.3 MB
//! less code in the static binary, and no C toolchain's cmake build of aws-lc for
//! either architecture. Nothing here needs aws-lc's FIPS mode or post-quantum key
//! exchange.

use std::sync::Once;

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Makes ring the process's provider, which reqwest's clients take (built
/// without one of their own). Idempotent.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only if another provider is already the default: then that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client builder, with the provider in place.
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}

/// The AWS SDK's HTTP client (HTTPS, and plain HTTP for an emulator on loopback).
pub fn aws_http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

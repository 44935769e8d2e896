//! Decisions reused per (digest, profile) for `admission.cache_secs`: one cache
//! for the webhook's, one for ECR's, since each profile may set either apart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Decisions kept at most: past it, expired ones go, then new ones are not kept.
const CACHE_ENTRIES: usize = 4096;

/// (digest, profile): a decision is the image's, as the profile's rule saw it.
type CacheKey = (String, String);
/// When it expires, whether allowed, the reason given.
type Cached = (Instant, bool, Option<String>);

pub(super) struct Decisions {
    cache_for: Duration,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl Decisions {
    /// Keeps each decision for `cache_for`; zero: none.
    pub(super) fn new(cache_for: Duration) -> Decisions {
        Decisions {
            cache_for,
            cache: Mutex::default(),
        }
    }

    /// A fresh decision on `digest` for `profile`: whether allowed, and why.
    pub(super) fn get(&self, digest: &str, profile: &str) -> Option<(bool, Option<String>)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let key = (digest.to_owned(), profile.to_owned());
        match cache.get(&key) {
            Some((expires, allowed, reason)) if Instant::now() < *expires => {
                Some((*allowed, reason.clone()))
            }
            _ => None,
        }
    }

    pub(super) fn put(&self, digest: &str, profile: &str, allowed: bool, reason: Option<String>) {
        if self.cache_for.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (expires, ..)| now < *expires);
        }
        if cache.len() < CACHE_ENTRIES {
            let key = (digest.to_owned(), profile.to_owned());
            cache.insert(key, (now + self.cache_for, allowed, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_decision_is_kept_for_cache_secs_then_asked_again() {
        let decisions = Decisions::new(Duration::from_secs(300));
        decisions.put("sha256:a", "default", false, Some("critical".into()));
        let kept = Some((false, Some("critical".to_owned())));
        assert_eq!(decisions.get("sha256:a", "default"), kept);
        assert_eq!(decisions.get("sha256:b", "default"), None);
        assert_eq!(decisions.get("sha256:a", "other"), None, "per profile");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(decisions.get("sha256:a", "default").is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(decisions.get("sha256:a", "default"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_cache_keeps_nothing_and_a_full_one_makes_room_only_from_the_expired() {
        let none = Decisions::new(Duration::ZERO);
        none.put("sha256:a", "default", true, None);
        assert_eq!(none.get("sha256:a", "default"), None);
        let decisions = Decisions::new(Duration::from_secs(60));
        for i in 0..CACHE_ENTRIES {
            decisions.put(&format!("sha256:{i}"), "default", true, None);
        }
        decisions.put("sha256:over", "default", true, None);
        assert_eq!(
            decisions.get("sha256:over", "default"),
            None,
            "full: not kept"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        decisions.put("sha256:later", "default", true, None);
        assert!(decisions.get("sha256:later", "default").is_some());
        let len = decisions.cache.lock().unwrap().len();
        assert_eq!(len, 1, "the expired went to make room");
    }
}

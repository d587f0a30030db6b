//! `execution.kubernetes`: what the run's Indexed Jobs ask a Kubernetes cluster for.
//!
//! Owns decoding and checking the block; building the objects from it lives in `plan::k8s`.
//! Every value here becomes one field of a typed Kubernetes object, so the checks are about
//! Kubernetes' own rules (names are DNS-1123 labels or subdomains, a node label value is at most
//! 63 characters of its alphabet) and about what kitt needs: the kitt image is named by digest,
//! because `kitt work` refuses to run a unit with a build other than the one that created the
//! run, and a tag may move between two pods of one run.
//!
//! Unlike `execution.slurm`, the block changes how engines run (as sidecars kitt does not
//! start), so it reaches the plan's engine groups and their keys; see `plan::compile`.

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Dur, Fields, Spanned};
use super::diag::Diagnostic;
use super::yaml::Node;

/// Where the kitt binary lies in the kitt image (`scripts/pack-image.sh` puts it there).
pub const KITT_IN_IMAGE: &str = "/usr/local/bin/kitt";
/// The port a sidecar engine listens on when neither the block nor its template names one.
pub const DEFAULT_ENGINE_PORT: u16 = 8000;
/// Attempts per unit (per Job index) when `max_attempts` is absent: the executors' default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What the run's Indexed Jobs ask Kubernetes for.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The namespace every object of the run is created in (a DNS-1123 label).
    #[schemars(with = "DnsLabel")]
    pub namespace: Spanned<String>,
    /// The kitt image, named by digest: `registry/kitt@sha256:<64 hex>` (a tag before the
    /// digest is allowed and ignored by Kubernetes).
    #[schemars(with = "ImageByDigest")]
    pub image: Spanned<String>,
    /// A ReadWriteMany PersistentVolumeClaim mounted as the runs directory (`/runs`) in every
    /// pod: the run directory lives on it.
    #[schemars(with = "DnsSubdomain")]
    pub runs_claim: Spanned<String>,
    /// A PersistentVolumeClaim holding model files as they lie under the suite's directory,
    /// mounted read-only where an engine template mounts `{{model.dir}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DnsSubdomain>")]
    pub models_claim: Option<Spanned<String>>,
    /// Node selection by the `nvidia.com/gpu.product` label (as GPU feature discovery writes
    /// it, such as `NVIDIA-H100-80GB-HBM3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<LabelValue>")]
    pub gpu_product: Option<Spanned<String>>,
    /// Most pods of one Job running at once (`parallelism`); all of them when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_jobs: Option<Spanned<u32>>,
    /// Pods per unit before its index fails (`backoffLimitPerIndex` is this minus 1; default 3).
    /// A pod evicted by a node drain or preemption does not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u32>", range(min = 1, max = 100))]
    pub max_attempts: Option<Spanned<u32>>,
    /// An existing ServiceAccount for the pods; kitt then creates no ServiceAccount, Role or
    /// RoleBinding (for clusters where those are made by an administrator).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DnsSubdomain>")]
    pub service_account: Option<Spanned<String>>,
    /// The port sidecar engines listen on (default: the engine template's `default_port`, else
    /// 8000). Placement only: it never enters a step's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u16>", range(min = 1))]
    pub engine_port: Option<Spanned<u16>>,
    /// A Secret whose keys are environment variable names: an engine's `env` value
    /// `{from_env: NAME}` reads key `NAME` of it, and kitt gets every key (for request headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DnsSubdomain>")]
    pub secret: Option<Spanned<String>>,
    /// A PriorityClass for the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DnsSubdomain>")]
    pub priority_class: Option<Spanned<String>>,
    /// Secrets for pulling the images from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<DnsSubdomain>")]
    pub image_pull_secrets: Vec<Spanned<String>>,
    /// Longest a Job may run before Kubernetes stops it (`activeDeadlineSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<super::decode::Deadline>")]
    pub deadline: Option<Spanned<Dur>>,
    /// How long a finished Job and its pods are kept (`ttlSecondsAfterFinished`); kept until
    /// deleted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Dur>")]
    pub ttl_after_finished: Option<Spanned<Dur>>,
}

impl Kubernetes {
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.as_ref().map_or(DEFAULT_MAX_ATTEMPTS, |m| m.value)
    }
}

impl Decode for Kubernetes {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`execution.kubernetes`")?;
        let namespace: Option<Spanned<String>> = f.req(cx, "namespace");
        let image: Option<Spanned<String>> = f.req(cx, "image");
        let runs_claim: Option<Spanned<String>> = f.req(cx, "runs_claim");
        let models_claim: Option<Spanned<String>> = f.opt(cx, "models_claim");
        let gpu_product: Option<Spanned<String>> = f.opt(cx, "gpu_product");
        let max_jobs: Option<Spanned<u32>> = f.opt(cx, "max_jobs");
        let max_attempts: Option<Spanned<u32>> = f.opt(cx, "max_attempts");
        let service_account: Option<Spanned<String>> = f.opt(cx, "service_account");
        let engine_port: Option<Spanned<u16>> = f.opt(cx, "engine_port");
        let secret: Option<Spanned<String>> = f.opt(cx, "secret");
        let priority_class: Option<Spanned<String>> = f.opt(cx, "priority_class");
        let image_pull_secrets: Vec<Spanned<String>> = f.opt(cx, "image_pull_secrets").unwrap_or_default();
        let deadline: Option<Spanned<Dur>> = f.opt(cx, "deadline");
        let ttl_after_finished: Option<Spanned<Dur>> = f.opt(cx, "ttl_after_finished");
        f.finish(cx);
        let mut ok = true;
        if let Some(n) = &namespace {
            ok &= check(cx, "namespace", n, is_dns_label(&n.value), "a DNS-1123 label", "such as `llm-bench`");
        }
        for (key, v) in [
            ("runs_claim", runs_claim.as_ref()),
            ("models_claim", models_claim.as_ref()),
            ("service_account", service_account.as_ref()),
            ("secret", secret.as_ref()),
            ("priority_class", priority_class.as_ref()),
        ]
        .into_iter()
        .chain(image_pull_secrets.iter().map(|s| ("image_pull_secrets", Some(s))))
        {
            if let Some(v) = v {
                ok &= check(cx, key, v, is_dns_subdomain(&v.value), "a Kubernetes object name", "such as `kitt-runs`");
            }
        }
        if let Some(g) = &gpu_product {
            ok &= check(
                cx,
                "gpu_product",
                g,
                is_label_value(&g.value) && !g.value.is_empty(),
                "a node label value",
                "as `kubectl get nodes -L nvidia.com/gpu.product` shows it, such as `NVIDIA-H100-80GB-HBM3`",
            );
        }
        if let Some(i) = &image {
            ok &= check_image(cx, i);
        }
        for (key, v) in [("max_jobs", &max_jobs), ("max_attempts", &max_attempts)] {
            if let Some(m) = v.as_ref().filter(|m| m.value == 0) {
                cx.error(
                    Diagnostic::new(m.pos, format!("`{key}` in `execution.kubernetes` must be at least 1"))
                        .help(format!("leave `{key}` out for the default")),
                );
                ok = false;
            }
        }
        if let Some(m) = max_attempts.as_ref().filter(|m| m.value > 100) {
            cx.error(
                Diagnostic::new(m.pos, format!("`max_attempts` in `execution.kubernetes`: {} is over 100", m.value))
                    .help("a unit that fails 100 times will not pass the 101st: fix what fails, or use fewer attempts"),
            );
            ok = false;
        }
        if let Some(p) = engine_port.as_ref().filter(|p| p.value == 0) {
            cx.error(
                Diagnostic::new(p.pos, "`engine_port` in `execution.kubernetes` must be a port from 1 to 65535")
                    .help("write the port the engines listen on in the pod, or leave it out for the template's"),
            );
            ok = false;
        }
        for (key, v) in [("deadline", &deadline), ("ttl_after_finished", &ttl_after_finished)] {
            if let Some(d) =
                v.as_ref().filter(|d| d.value.0.subsec_nanos() != 0 || (key == "deadline" && d.value.0.is_zero()))
            {
                cx.error(
                    Diagnostic::new(
                        d.pos,
                        format!(
                            "`{key}` in `execution.kubernetes`: `{}` is not a whole number of seconds above 0",
                            humantime::format_duration(d.value.0)
                        ),
                    )
                    .help("Kubernetes counts whole seconds: write a duration like `6h` or `90m`"),
                );
                ok = false;
            }
        }
        let k = Kubernetes {
            namespace: namespace?,
            image: image?,
            runs_claim: runs_claim?,
            models_claim,
            gpu_product,
            max_jobs,
            max_attempts,
            service_account,
            engine_port,
            secret,
            priority_class,
            image_pull_secrets,
            deadline,
            ttl_after_finished,
        };
        ok.then_some(k)
    }
}

fn check(cx: &mut Cx, key: &str, v: &Spanned<String>, good: bool, what: &str, example: &str) -> bool {
    if !good {
        cx.error(
            Diagnostic::new(
                v.pos,
                format!("`{key}` in `execution.kubernetes`: `{}` is not {what}", v.value.escape_debug()),
            )
            .help(help_for(what, example)),
        );
    }
    good
}

fn help_for(what: &str, example: &str) -> String {
    match what {
        "a DNS-1123 label" => format!(
            "write at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit, {example}"
        ),
        "a Kubernetes object name" => format!(
            "write at most 253 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit, {example}"
        ),
        _ => format!(
            "write at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit, {example}"
        ),
    }
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: labels of `[a-z0-9-]` joined by `.`, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The digest of an image reference `name[:tag]@sha256:<64 lowercase hex>`, if it has one.
pub fn image_digest(image: &str) -> Option<&str> {
    let (name, digest) = image.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    let good_name = !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    (good_name && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(digest)
}

fn check_image(cx: &mut Cx, i: &Spanned<String>) -> bool {
    if image_digest(&i.value).is_some() {
        return true;
    }
    let why = if i.value.contains('@') {
        "its digest is not `sha256:` and 64 lowercase hex digits"
    } else {
        "it has no digest"
    };
    cx.error(
        Diagnostic::new(i.pos, format!("`image` in `execution.kubernetes`: `{}` is not named by digest ({why})", i.value.escape_debug()))
            .help("name the kitt image by digest, `registry.example.com/kitt@sha256:…` (`docker push` prints it): `kitt work` refuses a build other than the run's, and a tag can move between two pods"),
    );
    false
}

struct DnsLabel;
impl JsonSchema for DnsLabel {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DnsLabel".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"})
    }
}

struct DnsSubdomain;
impl JsonSchema for DnsSubdomain {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DnsSubdomain".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 253,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        })
    }
}

struct LabelValue;
impl JsonSchema for LabelValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "maxLength": 63, "pattern": "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"})
    }
}

struct ImageByDigest;
impl JsonSchema for ImageByDigest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ImageByDigest".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An image reference with a digest: `registry/kitt@sha256:<64 hex>`.",
            "type": "string",
            "pattern": "^[^@\\s]+@sha256:[0-9a-f]{64}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("llm-bench") && is_dns_label("a") && !is_dns_label("Bench") && !is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)) && !is_dns_label("a.b"));
        assert!(is_dns_subdomain("kitt-runs.v1") && !is_dns_subdomain("a..b") && !is_dns_subdomain("a_b"));
        assert!(is_label_value("NVIDIA-H100-80GB-HBM3") && !is_label_value("-x") && !is_label_value("a b"));
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(image_digest(&format!("reg.example/kitt@{d}")), Some(d.as_str()));
        assert_eq!(image_digest(&format!("reg.example:5000/kitt:v1@{d}")), Some(d.as_str()));
        assert_eq!(image_digest("reg.example/kitt:v1"), None);
        assert_eq!(image_digest(&format!("@{d}")), None);
        assert_eq!(image_digest("kitt@sha256:ABC"), None);
    }
}

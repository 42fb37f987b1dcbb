//! The parts of a pod the injector reads, deserialized straight from the
//! AdmissionReview's bytes.
//!
//! The API server sends whole objects, up to its request limit of 3 MiB;
//! a tree of `serde_json::Value`s for such a body takes many times its size
//! (one small JSON value costs a 32-byte node plus its allocation), so a
//! few large reviews would take the injector over its memory limit. Here
//! strings are borrowed from the body where they have no escapes, every
//! field the injector does not read is skipped without being stored, and
//! what is kept is bounded by construction:
//!
//! - each list of containers holds at most [`MAX_CONTAINERS`], the volumes
//!   [`MAX_VOLUMES`], a container's ports [`MAX_PORTS`] and its volume
//!   mounts [`MAX_MOUNTS`] (a pod over a bound is refused, naming it; no
//!   real pod comes near them);
//! - of a container, only its name, ports (as `u16`s), the injector's own
//!   volumes it mounts, its uid and the container an ephemeral one targets;
//!   of a volume, its name; each with its raw JSON (borrowed), so that an
//!   update can be compared with what was injected;
//! - of the labels, only the `coffer.dev/` ones; of the annotations, the
//!   total size and the entries the injector reads (`coffer.dev/`,
//!   `vault.hashicorp.com/`, `kubectl.kubernetes.io/default-container`),
//!   and none once the total passes Kubernetes' limit ([`ANNOTATIONS_BUDGET`]).

use std::{
    borrow::{Borrow, Cow},
    collections::BTreeMap,
    fmt,
    marker::PhantomData,
    ops::Deref,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

/// The container kubectl picks when none is named: read here, and set by
/// the patch in `container` mode (where the sidecar comes first) unless the
/// pod names one.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The volumes the injector adds: no other container may mount them (the
/// token above all). A container's mounts of them are what is kept of its
/// mounts; the patch adds them.
pub const VOLUMES: [&str; 5] = [
    "coffer-secrets",
    "coffer-token",
    "coffer-ca",
    "coffer-config",
    crate::env::ENV_VOLUME,
];
/// Kubernetes' limit on the size of all of an object's annotations, keys
/// and values together (`TotalAnnotationSizeLimitB`, 256 KiB). The API
/// server refuses a pod over it with an opaque "Too long".
pub const ANNOTATIONS_BUDGET: usize = 256 * 1024;
/// Containers in one list (`containers`, `initContainers`,
/// `ephemeralContainers`).
pub const MAX_CONTAINERS: usize = 128;
/// Volumes of one pod.
pub const MAX_VOLUMES: usize = 512;
/// Ports one container declares.
pub const MAX_PORTS: usize = 1024;
/// Volume mounts of one container.
pub const MAX_MOUNTS: usize = 1024;
/// `coffer.dev/` labels kept (the injector knows two).
const MAX_COFFER_LABELS: usize = 64;

const COFFER_PREFIX: &str = "coffer.dev/";
const VAULT_PREFIX: &str = "vault.hashicorp.com/";

/// A string of the body: borrowed when it has no escapes, owned otherwise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Self(Cow::Borrowed(text))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_string())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A pod: the parts the injector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod<'a> {
    /// Its metadata.
    #[serde(borrow, default)]
    pub metadata: Metadata<'a>,
    /// Its spec (absent in an `EphemeralContainers` object).
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
    /// The ephemeral containers of the `EphemeralContainers` object the
    /// `pods/ephemeralcontainers` subresource carried before Kubernetes
    /// 1.22 (since, the subresource carries the pod).
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Containers<'a>>,
}

impl<'a> Pod<'a> {
    /// Parses a pod from the raw JSON of an AdmissionReview.
    pub fn parse(raw: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }

    /// Its annotations (none when it has no map).
    pub fn annotations(&self) -> &Annotations<'a> {
        self.metadata
            .annotations
            .as_ref()
            .unwrap_or(&NO_ANNOTATIONS)
    }

    /// Its `coffer.dev/` labels.
    pub fn coffer_labels(&self) -> &BTreeMap<Text<'a>, Text<'a>> {
        self.metadata
            .labels
            .as_ref()
            .map_or(&NO_LABELS.coffer, |labels| &labels.coffer)
    }

    /// Every container of its spec (init, app, ephemeral) and of an
    /// `EphemeralContainers` object, with the list it is in.
    pub fn all_containers(&self) -> impl Iterator<Item = &Raw<'a, Container<'a>>> {
        let spec = self.spec.as_ref();
        [
            spec.and_then(|s| s.init_containers.as_ref()),
            spec.and_then(|s| s.containers.as_ref()),
            spec.and_then(|s| s.ephemeral_containers.as_ref()),
            self.ephemeral_containers.as_ref(),
        ]
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter())
    }

    /// Its ephemeral containers.
    pub fn ephemeral(&self) -> impl Iterator<Item = &Raw<'a, Container<'a>>> {
        [
            self.spec
                .as_ref()
                .and_then(|s| s.ephemeral_containers.as_ref()),
            self.ephemeral_containers.as_ref(),
        ]
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter())
    }
}

static NO_ANNOTATIONS: Annotations<'static> = Annotations {
    kept: BTreeMap::new(),
    total: 0,
};
static NO_LABELS: Labels<'static> = Labels {
    coffer: BTreeMap::new(),
};

/// A pod's metadata: the parts the injector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    /// `metadata.name` (empty until the API server names a generated pod).
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    /// `metadata.generateName`.
    #[serde(borrow, default)]
    pub generate_name: Option<Text<'a>>,
    /// `metadata.namespace`.
    #[serde(borrow, default)]
    pub namespace: Option<Text<'a>>,
    /// Its labels, when it has a map of them.
    #[serde(borrow, default)]
    pub labels: Option<Labels<'a>>,
    /// Its annotations, when it has a map of them.
    #[serde(borrow, default)]
    pub annotations: Option<Annotations<'a>>,
}

/// A pod's `coffer.dev/` labels; the others are skipped.
#[derive(Debug, Default)]
pub struct Labels<'a> {
    /// The `coffer.dev/` labels.
    pub coffer: BTreeMap<Text<'a>, Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for LabelsVisitor<'a> {
            type Value = Labels<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut labels = Labels::default();
                while let Some(key) = map.next_key::<Text<'a>>()? {
                    if !key.starts_with(COFFER_PREFIX) {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let value = map.next_value::<Text<'a>>()?;
                    if labels.coffer.len() == MAX_COFFER_LABELS {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_COFFER_LABELS} coffer.dev/ labels"
                        )));
                    }
                    labels.coffer.insert(key, value);
                }
                Ok(labels)
            }
        }
        deserializer.deserialize_map(LabelsVisitor(PhantomData))
    }
}

/// A pod's annotations: their total size and the entries the injector
/// reads.
#[derive(Debug, Default, Clone)]
pub struct Annotations<'a> {
    /// The entries under `coffer.dev/` and `vault.hashicorp.com/`, and
    /// `kubectl.kubernetes.io/default-container`, while the total stays
    /// within [`ANNOTATIONS_BUDGET`].
    kept: BTreeMap<Text<'a>, Text<'a>>,
    /// The size of all of them, as Kubernetes counts it: the bytes of every
    /// key and every value.
    pub total: usize,
}

impl<'a> Annotations<'a> {
    /// Annotations of these entries (for tests and tools).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut annotations = Self::default();
        for (key, value) in pairs {
            annotations.insert(Text::from(key), Text::from(value));
        }
        annotations
    }

    fn insert(&mut self, key: Text<'a>, value: Text<'a>) {
        self.total += key.len() + value.len();
        let read = key.starts_with(COFFER_PREFIX)
            || key.starts_with(VAULT_PREFIX)
            || *key == *DEFAULT_CONTAINER_ANNOTATION;
        if read && self.total <= ANNOTATIONS_BUDGET {
            self.kept.insert(key, value);
        }
    }

    /// The value of `key`, if the injector reads that key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kept.get(key).map(|v| &**v)
    }

    /// Whether there is an entry `key` the injector reads.
    pub fn contains_key(&self, key: &str) -> bool {
        self.kept.contains_key(key)
    }

    /// The entries the injector reads, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kept.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The `coffer.dev/` entries.
    pub fn coffer(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| k.starts_with(COFFER_PREFIX))
    }

    /// Whether the total is over Kubernetes' limit (then not every entry
    /// the injector reads was kept).
    pub fn over_budget(&self) -> bool {
        self.total > ANNOTATIONS_BUDGET
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Annotations<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for AnnotationsVisitor<'a> {
            type Value = Annotations<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of annotations")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut annotations = Annotations::default();
                while let Some(key) = map.next_key::<Text<'a>>()? {
                    let value = map.next_value::<Text<'a>>()?;
                    annotations.insert(key, value);
                }
                Ok(annotations)
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor(PhantomData))
    }
}

/// A pod's spec: the parts the injector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    /// `spec.containers`.
    #[serde(borrow, default)]
    pub containers: Option<Containers<'a>>,
    /// `spec.initContainers`.
    #[serde(borrow, default)]
    pub init_containers: Option<Containers<'a>>,
    /// `spec.ephemeralContainers`.
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Containers<'a>>,
    /// `spec.volumes`.
    #[serde(borrow, default)]
    pub volumes: Option<Volumes<'a>>,
    /// `spec.securityContext`.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
}

/// A list of at most [`MAX_CONTAINERS`] containers.
pub type Containers<'a> = Bounded<Raw<'a, Container<'a>>, ContainersBound>;
/// A list of at most [`MAX_VOLUMES`] volumes.
pub type Volumes<'a> = Bounded<Raw<'a, Volume<'a>>, VolumesBound>;

/// A container: the parts the injector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    /// Its name.
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    /// The ports it declares.
    #[serde(default)]
    pub ports: Option<Ports>,
    /// Its volume mounts, when it has a list of them.
    #[serde(default)]
    pub volume_mounts: Option<Mounts>,
    /// Its security context.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// The container whose processes an ephemeral container joins.
    #[serde(borrow, default)]
    pub target_container_name: Option<Text<'a>>,
}

impl Container<'_> {
    /// Its name, or "" when it has none.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// A volume: its name.
#[derive(Debug, Default, Deserialize)]
pub struct Volume<'a> {
    /// Its name.
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
}

/// A security context: the uid.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// `runAsUser`.
    #[serde(default)]
    pub run_as_user: Option<i64>,
}

/// An entry parsed, with its raw JSON (borrowed from the body).
#[derive(Debug)]
pub struct Raw<'a, T> {
    /// The entry's JSON as the API server sent it.
    pub raw: &'a RawValue,
    /// The parts the injector reads.
    pub value: T,
}

impl<T> Deref for Raw<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de: 'a, 'a, T: Deserialize<'a>> Deserialize<'de> for Raw<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'a RawValue>::deserialize(deserializer)?;
        let value = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        Ok(Self { raw, value })
    }
}

/// A bound on a list: how long it may be, and what it holds (for the
/// message).
pub trait Bound {
    /// The most entries.
    const MAX: usize;
    /// What the entries are, e.g. "containers in one list".
    const WHAT: &'static str;
}

/// [`MAX_CONTAINERS`].
#[derive(Debug)]
pub struct ContainersBound;
impl Bound for ContainersBound {
    const MAX: usize = MAX_CONTAINERS;
    const WHAT: &'static str = "containers in one list";
}

/// [`MAX_VOLUMES`].
#[derive(Debug)]
pub struct VolumesBound;
impl Bound for VolumesBound {
    const MAX: usize = MAX_VOLUMES;
    const WHAT: &'static str = "volumes";
}

/// A list of at most `B::MAX` entries; a longer one fails to parse.
#[derive(Debug)]
pub struct Bounded<T, B>(Vec<T>, PhantomData<B>);

impl<T, B> Deref for Bounded<T, B> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>, B: Bound> Deserialize<'de> for Bounded<T, B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<T, B>(PhantomData<(T, B)>);
        impl<'de, T: Deserialize<'de>, B: Bound> Visitor<'de> for BoundedVisitor<T, B> {
            type Value = Bounded<T, B>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {} {}", B::MAX, B::WHAT)
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == B::MAX {
                        return Err(de::Error::custom(format_args!(
                            "more than {} {}",
                            B::MAX,
                            B::WHAT
                        )));
                    }
                    items.push(item);
                }
                Ok(Bounded(items, PhantomData))
            }
        }
        deserializer.deserialize_seq(BoundedVisitor(PhantomData))
    }
}

/// The ports a container declares (`containerPort`), at most [`MAX_PORTS`].
#[derive(Debug, Default, Clone)]
pub struct Ports(pub Vec<u16>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Port {
            #[serde(default)]
            container_port: Option<i64>,
        }
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = Ports;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ports")
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut ports = Vec::new();
                let mut count = 0;
                while let Some(port) = seq.next_element::<Port>()? {
                    count += 1;
                    if count > MAX_PORTS {
                        return Err(de::Error::custom(format_args!(
                            "a container declares more than {MAX_PORTS} ports"
                        )));
                    }
                    // Out of range, the API server refuses it anyway.
                    if let Some(port) = port.container_port.and_then(|p| u16::try_from(p).ok()) {
                        ports.push(port);
                    }
                }
                Ok(Ports(ports))
            }
        }
        deserializer.deserialize_seq(PortsVisitor)
    }
}

/// A container's volume mounts: only which of the injector's volumes they
/// name (at most [`MAX_MOUNTS`] are read).
#[derive(Debug, Default, Clone)]
pub struct Mounts {
    /// The injector's volumes mounted, each once.
    pub injected: Vec<&'static str>,
}

impl<'de> Deserialize<'de> for Mounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Mount<'a> {
            #[serde(borrow, default)]
            name: Option<Text<'a>>,
        }
        struct MountsVisitor;
        impl<'de> Visitor<'de> for MountsVisitor {
            type Value = Mounts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of volume mounts")
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut mounts = Mounts::default();
                let mut count = 0;
                while let Some(mount) = seq.next_element::<Mount<'_>>()? {
                    count += 1;
                    if count > MAX_MOUNTS {
                        return Err(de::Error::custom(format_args!(
                            "a container has more than {MAX_MOUNTS} volume mounts"
                        )));
                    }
                    let name = mount.name.as_deref().unwrap_or_default();
                    if let Some(volume) = VOLUMES.iter().find(|v| **v == name)
                        && !mounts.injected.contains(volume)
                    {
                        mounts.injected.push(volume);
                    }
                }
                Ok(mounts)
            }
        }
        deserializer.deserialize_seq(MountsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<(), String> {
        let text = value.to_string();
        Pod::parse(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"metadata": {"name": "web", "annotations": {"coffer.dev/template-db": "a\nb", "coffer.dev/secret-db": "shop/db"}}}"#;
        let pod = Pod::parse(text).unwrap();
        assert!(matches!(
            pod.metadata.name,
            Some(Text(Cow::Borrowed("web")))
        ));
        let annotations = pod.annotations();
        assert_eq!(annotations.get("coffer.dev/template-db"), Some("a\nb"));
        assert_eq!(annotations.get("coffer.dev/secret-db"), Some("shop/db"));
    }

    #[test]
    fn fields_the_injector_does_not_read_are_skipped() {
        let text = json!({
            "metadata": {"labels": {"app": "web", "coffer.dev/inject": "true"}, "annotations": {"other": "x"}},
            "spec": {"containers": [{"name": "web", "args": ["a", {"b": [1, 2]}], "env": [{"name": "A"}]}]},
            "status": {"phase": "Pending"},
        })
        .to_string();
        let pod = Pod::parse(&text).unwrap();
        assert_eq!(pod.coffer_labels().len(), 1);
        assert_eq!(pod.annotations().iter().count(), 0);
        assert_eq!(pod.annotations().total, "other".len() + 1);
        let containers = pod.spec.as_ref().unwrap().containers.as_ref().unwrap();
        assert_eq!(containers[0].name(), "web");
        assert!(containers[0].raw.get().contains(r#""env":[{"name":"A"}]"#));
    }

    #[test]
    fn lists_are_bounded() {
        let containers: Vec<_> = (0..=MAX_CONTAINERS).map(|_| json!({})).collect();
        let error = parse(json!({"spec": {"containers": containers}})).unwrap_err();
        assert!(error.contains("more than 128 containers"), "{error}");
        let ports: Vec<_> = (0..=MAX_PORTS)
            .map(|p| json!({"containerPort": p}))
            .collect();
        let error = parse(json!({"spec": {"containers": [{"ports": ports}]}})).unwrap_err();
        assert!(error.contains("ports"), "{error}");
        let volumes: Vec<_> = (0..=MAX_VOLUMES).map(|_| json!({})).collect();
        let error = parse(json!({"spec": {"volumes": volumes}})).unwrap_err();
        assert!(error.contains("volumes"), "{error}");
    }

    #[test]
    fn annotations_past_the_budget_are_counted_not_kept() {
        let big = "x".repeat(ANNOTATIONS_BUDGET);
        let text =
            json!({"metadata": {"annotations": {"a": big, "coffer.dev/secret-db": "shop/db"}}})
                .to_string();
        let pod = Pod::parse(&text).unwrap();
        assert!(pod.annotations().over_budget());
        assert_eq!(pod.annotations().get("coffer.dev/secret-db"), None);
    }

    #[test]
    fn mounts_of_the_injectors_volumes_are_found() {
        let text = json!({"spec": {"containers": [{"volumeMounts": [
            {"name": "data"}, {"name": "coffer-token"}, {"name": "coffer-token"},
        ]}]}})
        .to_string();
        let pod = Pod::parse(&text).unwrap();
        let container = &pod.spec.as_ref().unwrap().containers.as_ref().unwrap()[0];
        assert_eq!(
            container.volume_mounts.as_ref().unwrap().injected,
            ["coffer-token"]
        );
    }
}

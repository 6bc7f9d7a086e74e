//! Small constructors of the Kubernetes values the pod's builders share: mounts, volumes,
//! env entries and the `restricted` security context.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvVar, KeyToPath, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// PodSecurity `restricted`'s container-level demands.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The container runtime's default seccomp profile.
pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// Volume `name` mounted read-write at `path`.
pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// Volume `name` mounted read-only at `path`.
pub(super) fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..mount(name, path)
    }
}

/// An `emptyDir` volume; `memory` puts it in memory, up to that size.
pub(super) fn empty_dir(name: &str, memory: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: memory.map(|_| "Memory".into()),
            size_limit: memory.map(|size| Quantity(size.into())),
        }),
        ..Default::default()
    }
}

/// An env entry with a value as it is (the caller makes it literal, if it must be).
pub(super) fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// One key of a Secret or ConfigMap projected as file `path`.
pub(super) fn key_to_path(key: &str, path: impl Into<String>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        ..Default::default()
    }
}

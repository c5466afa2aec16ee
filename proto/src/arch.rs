//! The builtin architectures: the one list of what `source = "builtin"` can name, with the
//! facts about each that the sweep file, the coordinator and the trainer all need. It lives
//! here, not in the libtorch crate, so `tsweep submit` can check a sweep file without
//! linking libtorch.

use serde::{Deserialize, Serialize};

/// Per-channel input normalisation, applied to RGB pixels scaled to [0, 1]:
/// `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalize {
    /// torchvision's ImageNet statistics (every torchvision classifier).
    pub const IMAGENET: Normalize = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// TensorFlow's EfficientNet-Lite recipe, `(x - 127) / 128` on 0..255 pixels.
    pub const TF_LITE: Normalize = Normalize {
        mean: [127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0],
        std: [128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0],
    };

    /// Every mean finite and every std finite and positive.
    pub fn is_valid(&self) -> bool {
        self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0)
    }

    /// Whether this is [`Normalize::IMAGENET`].
    pub fn is_imagenet(&self) -> bool {
        *self == Normalize::IMAGENET
    }

    /// The input normalisation a model uses when its sweep file gives none: the builtin
    /// architecture's (ImageNet's for torchvision's networks, TensorFlow's for Lite), and
    /// ImageNet's for TorchScript modules and names the registry does not know.
    pub fn default_for(arch: &str, builtin: bool) -> Normalize {
        match (builtin, lookup(arch)) {
            (true, Some(a)) => a.normalize,
            _ => Normalize::IMAGENET,
        }
    }
}

/// ImageNet's statistics: what every model used before the normalisation was configurable.
impl Default for Normalize {
    fn default() -> Self {
        Normalize::IMAGENET
    }
}

/// One builtin architecture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arch {
    /// The name a sweep file's `arch` (or model `name`) uses.
    pub name: &'static str,
    /// Width of the pooled penultimate feature the backbone returns.
    pub feature_dim: u32,
    /// The input resolution its ImageNet weights were trained at.
    pub native_size: u32,
    /// The input normalisation its pretrained weights expect.
    pub normalize: Normalize,
    /// Whether it has an auxiliary classifier (Inception v3's `AuxLogits`).
    pub aux_head: bool,
}

const fn tv(name: &'static str, feature_dim: u32) -> Arch {
    Arch { name, feature_dim, native_size: 224, normalize: Normalize::IMAGENET, aux_head: false }
}

/// Every builtin architecture, in the order error messages list them.
pub const ARCHS: &[Arch] = &[
    tv("resnet18", 512),
    tv("resnet34", 512),
    tv("resnet50", 2048),
    tv("resnet101", 2048),
    tv("resnet152", 2048),
    tv("densenet121", 1024),
    tv("densenet169", 1664),
    tv("densenet201", 1920),
    tv("mobilenet_v2", 1280),
    tv("mobilenet_v2_140", 1792),
    Arch { name: "inception_v3", feature_dim: 2048, native_size: 299, normalize: Normalize::IMAGENET, aux_head: true },
    tv("efficientnet_b0", 1280),
    Arch {
        name: "efficientnet_lite0",
        feature_dim: 1280,
        native_size: 224,
        normalize: Normalize::TF_LITE,
        aux_head: false,
    },
    Arch {
        name: "efficientnet_lite1",
        feature_dim: 1280,
        native_size: 240,
        normalize: Normalize::TF_LITE,
        aux_head: false,
    },
    Arch {
        name: "efficientnet_lite2",
        feature_dim: 1280,
        native_size: 260,
        normalize: Normalize::TF_LITE,
        aux_head: false,
    },
];

/// The builtin architecture called `name`.
pub fn lookup(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// `resnet18, resnet34, ...`: for error messages.
pub fn known_names() -> String {
    ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lookup_finds_each() {
        for a in ARCHS {
            assert_eq!(lookup(a.name), Some(a));
            assert!(a.normalize.is_valid());
        }
        let mut names: Vec<_> = ARCHS.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ARCHS.len());
        assert!(lookup("resnet5000").is_none());
    }

    #[test]
    fn defaults_follow_the_registry_for_builtin_models_only() {
        assert_eq!(Normalize::default_for("efficientnet_lite1", true), Normalize::TF_LITE);
        assert_eq!(Normalize::default_for("resnet50", true), Normalize::IMAGENET);
        assert_eq!(Normalize::default_for("efficientnet_lite1", false), Normalize::IMAGENET);
        assert_eq!(Normalize::default_for("nasnet_large", false), Normalize::IMAGENET);
        assert!(Normalize::default().is_imagenet());
        assert!(!Normalize::TF_LITE.is_imagenet());
    }

    #[test]
    fn lite_normalisation_is_tensorflows_recipe() {
        let n = lookup("efficientnet_lite0").map(|a| a.normalize);
        let Some(n) = n else { panic!("efficientnet_lite0 missing") };
        // (x/255 - mean)/std == (x - 127)/128 for every pixel value
        for x in [0.0, 127.0, 255.0] {
            let ours = (x / 255.0 - n.mean[0]) / n.std[0];
            assert!((ours - (x - 127.0) / 128.0).abs() < 1e-12);
        }
    }
}

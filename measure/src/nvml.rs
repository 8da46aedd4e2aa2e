//! The GPU a CUDA case runs on, found in NVML, and its state (clocks, temperature, power,
//! throttle reasons) sampled by the supervisor just before and just after the case.
//!
//! NVML numbers GPUs in PCI order and knows nothing of `CUDA_VISIBLE_DEVICES`, while a
//! case names its device as CUDA does (`cuda:i`, after `CUDA_VISIBLE_DEVICES` and in
//! `CUDA_DEVICE_ORDER`). The GPU is found, in order of trust, by:
//! 1. `pci-bus-id`: the CUDA runtime's PCI bus id of device i (`cudaDeviceGetPCIBusId`,
//!    looked up in the process, as LibTorch loads the runtime; no CUDA headers needed),
//!    matched to NVML's. Exact whatever the order and the visible devices (a MIG instance
//!    is its parent GPU's bus id, whose clocks it shares).
//! 2. `uuid`: entry i of `CUDA_VISIBLE_DEVICES` is a GPU UUID (or a unique prefix of one).
//! 3. `index`: entry i of `CUDA_VISIBLE_DEVICES` (or i itself, when unset) taken as NVML's
//!    PCI-order index. Exact under `CUDA_DEVICE_ORDER=PCI_BUS_ID`; otherwise CUDA puts the
//!    fastest GPU first, so the index is trusted only when every GPU is the same model.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use xarena_reports::schema::{GpuSample, GpuState};

/// An entry of `CUDA_VISIBLE_DEVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A device number in CUDA's enumeration order.
    Index(u32),
    /// `GPU-<uuid>` or a prefix of it.
    Uuid(String),
    /// A MIG instance (`MIG-<uuid>`), which NVML's GPU list does not name.
    Mig(String),
}

/// The devices `CUDA_VISIBLE_DEVICES` makes visible, in order, as CUDA reads it: entries
/// are separated by commas and the list ends at the first entry that is not a device
/// (`-1` hides every later one).
pub fn parse_visible(value: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let selector = if let Some(rest) = entry.strip_prefix("MIG-") {
            // The old form names the parent: MIG-GPU-<uuid>/<gi>/<ci>.
            match rest.strip_prefix("GPU-") {
                Some(_) => Selector::Uuid(rest.split('/').next().unwrap_or(rest).to_string()),
                None => Selector::Mig(entry.to_string()),
            }
        } else if entry.starts_with("GPU-") {
            Selector::Uuid(entry.to_string())
        } else if let Ok(i) = entry.parse::<u32>() {
            Selector::Index(i)
        } else {
            break;
        };
        out.push(selector);
    }
    out
}

/// What CUDA device `index` is, given `CUDA_VISIBLE_DEVICES` (`None`: unset, every
/// device visible in order).
pub fn visible_selector(visible: Option<&str>, index: u32) -> Option<Selector> {
    match visible {
        None => Some(Selector::Index(index)),
        Some(v) => parse_visible(v).into_iter().nth(index as usize),
    }
}

/// The one UUID that starts with `prefix` (CUDA accepts any unambiguous prefix).
pub fn match_uuid(prefix: &str, uuids: &[Option<String>]) -> Option<usize> {
    let mut hits = uuids
        .iter()
        .enumerate()
        .filter(|(_, u)| u.as_deref().is_some_and(|u| u.starts_with(prefix)));
    let first = hits.next()?.0;
    hits.next().is_none().then_some(first)
}

/// A PCI bus id as (domain, bus, device, function). CUDA writes `0000:65:00.0`, NVML
/// `00000000:65:00.0`: parsed, they compare equal.
pub fn parse_pci_bus_id(s: &str) -> Option<(u32, u32, u32, u32)> {
    let s = s.trim().trim_end_matches('\0');
    let (rest, function) = s.rsplit_once('.')?;
    let mut parts = rest.rsplitn(3, ':');
    let device = parts.next()?;
    let bus = parts.next()?;
    let domain = parts.next().unwrap_or("0");
    let hex = |x: &str| u32::from_str_radix(x, 16).ok();
    Some((hex(domain)?, hex(bus)?, hex(device)?, hex(function)?))
}

/// The CUDA runtime's PCI bus id of device `index`, when the runtime is loaded in this
/// process (LibTorch with CUDA links it) and a device answers.
pub fn cuda_pci_bus_id(index: u32) -> Option<String> {
    type GetPciBusId = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    // SAFETY: dlsym with a NUL-terminated name; a null result is checked.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cudaDeviceGetPCIBusId".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol is the CUDA runtime's
    // `cudaError_t cudaDeviceGetPCIBusId(char*, int, int)`, stable across CUDA versions.
    let f: GetPciBusId = unsafe { std::mem::transmute::<*mut libc::c_void, GetPciBusId>(sym) };
    let mut buf = [0 as c_char; 64];
    // SAFETY: a buffer of the stated length; the runtime NUL-terminates what it writes.
    let rc = unsafe { f(buf.as_mut_ptr(), buf.len() as c_int, index as c_int) };
    if rc != 0 {
        return None;
    }
    buf[buf.len() - 1] = 0;
    // SAFETY: NUL-terminated just above at the latest.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

/// NVML's clock-event reasons by name, in NVML's bit order.
const REASONS: [(ThrottleReasons, &str); 9] = [
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        "display_clock_setting",
    ),
];

/// Reasons that hold the clocks below what the work asks for: power and thermal limits,
/// hardware slowdowns, a sync-boost group. Idle, and clocks set by the administrator
/// (applications, display), describe the setting rather than a limit hit while running.
const LIMITING: [&str; 6] = [
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
];

pub fn reason_names(reasons: ThrottleReasons) -> Vec<String> {
    REASONS
        .iter()
        .filter(|(bit, _)| reasons.contains(*bit))
        .map(|(_, name)| name.to_string())
        .collect()
}

/// Whether a sample's reasons include one that limits performance.
pub fn limiting(names: &[String]) -> bool {
    names.iter().any(|n| LIMITING.contains(&n.as_str()))
}

/// The GPU found for a CUDA device.
#[derive(Debug, Clone)]
struct Found {
    nvml_index: u32,
    uuid: Option<String>,
    name: String,
    matched_by: &'static str,
}

/// One NVML handle for a run, and the GPU of each CUDA device, found once.
pub struct GpuWatch {
    nvml: Nvml,
    found: HashMap<String, Option<Found>>,
}

impl GpuWatch {
    /// Fails without a driver (NVML's error, as text).
    pub fn init() -> Result<GpuWatch, String> {
        Ok(GpuWatch {
            nvml: Nvml::init().map_err(|e| e.to_string())?,
            found: HashMap::new(),
        })
    }

    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    fn find(&mut self, device: &str) -> Option<Found> {
        if let Some(f) = self.found.get(device) {
            return f.clone();
        }
        let found = device
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(|i| self.locate(i));
        if found.is_none() {
            eprintln!(
                "xarena: {device}: its GPU was not found in NVML; its records have no GPU state"
            );
        }
        self.found.insert(device.to_string(), found.clone());
        found
    }

    /// Total memory of a CUDA device (`cuda:N`), when NVML can find its GPU.
    pub fn total_memory(&self, device: &str) -> Option<u64> {
        let index = device.strip_prefix("cuda:")?.parse::<u32>().ok()?;
        let found = self.locate(index)?;
        let d = self.nvml.device_by_index(found.nvml_index).ok()?;
        d.memory_info().ok().map(|m| m.total)
    }

    fn locate(&self, cuda_index: u32) -> Option<Found> {
        let count = self.nvml.device_count().ok()?;
        let devices: Vec<_> = (0..count)
            .filter_map(|i| self.nvml.device_by_index(i).ok().map(|d| (i, d)))
            .collect();
        let found = |i: u32, matched_by| {
            let d = self.nvml.device_by_index(i).ok()?;
            Some(Found {
                nvml_index: i,
                uuid: d.uuid().ok(),
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                matched_by,
            })
        };
        if let Some(bus) = cuda_pci_bus_id(cuda_index).and_then(|b| parse_pci_bus_id(&b)) {
            let hit = devices.iter().find(|(_, d)| {
                d.pci_info()
                    .ok()
                    .and_then(|p| parse_pci_bus_id(&p.bus_id))
                    .is_some_and(|b| b == bus)
            });
            if let Some((i, _)) = hit {
                return found(*i, "pci-bus-id");
            }
        }
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        match visible_selector(visible.as_deref(), cuda_index)? {
            Selector::Uuid(prefix) => {
                let uuids: Vec<Option<String>> =
                    devices.iter().map(|(_, d)| d.uuid().ok()).collect();
                let k = match_uuid(&prefix, &uuids)?;
                found(devices[k].0, "uuid")
            }
            Selector::Index(i) => {
                let pci_order = std::env::var("CUDA_DEVICE_ORDER").as_deref() == Ok("PCI_BUS_ID");
                let names: Vec<String> = devices
                    .iter()
                    .map(|(_, d)| d.name().unwrap_or_default())
                    .collect();
                let alike = names.windows(2).all(|w| w[0] == w[1]);
                (pci_order || alike).then(|| found(i, "index")).flatten()
            }
            Selector::Mig(_) => None,
        }
    }

    fn sample(&self, nvml_index: u32) -> GpuSample {
        let Ok(d) = self.nvml.device_by_index(nvml_index) else {
            return GpuSample {
                sm_clock_mhz: None,
                memory_clock_mhz: None,
                temperature_c: None,
                power_w: None,
                throttle_reasons: Vec::new(),
            };
        };
        GpuSample {
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            memory_clock_mhz: d.clock_info(Clock::Memory).ok(),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            throttle_reasons: d
                .current_throttle_reasons()
                .map(reason_names)
                .unwrap_or_default(),
        }
    }
}

/// Runs `case` between two samples of the GPU of `device`: the state is `None` off CUDA,
/// without NVML, or where the GPU cannot be found.
pub fn around<T>(
    watch: Option<&mut GpuWatch>,
    device: &str,
    case: impl FnOnce() -> T,
) -> (T, Option<GpuState>) {
    let watch = watch.filter(|_| device.starts_with("cuda:"));
    let Some((watch, found)) = watch.and_then(|w| w.find(device).map(|f| (w, f))) else {
        return (case(), None);
    };
    let before = watch.sample(found.nvml_index);
    let out = case();
    let after = watch.sample(found.nvml_index);
    let throttled = limiting(&before.throttle_reasons) || limiting(&after.throttle_reasons);
    let state = GpuState {
        nvml_index: found.nvml_index,
        uuid: found.uuid,
        name: found.name,
        matched_by: Some(found.matched_by.to_string()),
        before,
        after,
        throttled,
    };
    (out, Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_map_cuda_indices() {
        // Unset: every device, in order.
        assert_eq!(visible_selector(None, 3), Some(Selector::Index(3)));
        // Integers renumber.
        assert_eq!(visible_selector(Some("2,0"), 0), Some(Selector::Index(2)));
        assert_eq!(visible_selector(Some("2, 0"), 1), Some(Selector::Index(0)));
        assert_eq!(visible_selector(Some("2,0"), 2), None);
        // Empty: nothing visible.
        assert_eq!(visible_selector(Some(""), 0), None);
        // The list ends at the first entry that is not a device.
        assert_eq!(parse_visible("1,-1,0"), vec![Selector::Index(1)]);
        assert_eq!(parse_visible("0,bogus,1"), vec![Selector::Index(0)]);
        // UUIDs, whole or a prefix, and MIG instances in both forms.
        assert_eq!(
            parse_visible("GPU-8f3c,MIG-GPU-aa11-bb/1/0,MIG-1234-abcd"),
            vec![
                Selector::Uuid("GPU-8f3c".into()),
                Selector::Uuid("GPU-aa11-bb".into()),
                Selector::Mig("MIG-1234-abcd".into()),
            ]
        );
    }

    #[test]
    fn uuid_prefixes_must_be_unambiguous() {
        let uuids = vec![
            Some("GPU-8f3c0000-1111".to_string()),
            None,
            Some("GPU-8f3d0000-2222".to_string()),
        ];
        assert_eq!(match_uuid("GPU-8f3d", &uuids), Some(2));
        assert_eq!(match_uuid("GPU-8f3c0000-1111", &uuids), Some(0));
        assert_eq!(match_uuid("GPU-8f3", &uuids), None, "two GPUs match");
        assert_eq!(match_uuid("GPU-ffff", &uuids), None);
    }

    #[test]
    fn pci_bus_ids_compare_across_cuda_and_nvml_forms() {
        let cuda = parse_pci_bus_id("0000:65:00.0").unwrap();
        let nvml = parse_pci_bus_id("00000000:65:00.0").unwrap();
        assert_eq!(cuda, nvml);
        assert_eq!(cuda, (0, 0x65, 0, 0));
        assert_eq!(parse_pci_bus_id("0001:B3:1F.7"), Some((1, 0xb3, 0x1f, 7)));
        assert_ne!(parse_pci_bus_id("0000:66:00.0"), Some(cuda));
        assert_eq!(parse_pci_bus_id("garbage"), None);
    }

    #[test]
    fn only_performance_limits_count_as_throttling() {
        let names = |r| reason_names(r);
        assert!(!limiting(&names(ThrottleReasons::empty())));
        assert!(!limiting(&names(ThrottleReasons::GPU_IDLE)));
        assert!(!limiting(&names(
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING | ThrottleReasons::GPU_IDLE
        )));
        assert!(!limiting(&names(ThrottleReasons::DISPLAY_CLOCK_SETTING)));
        for r in [
            ThrottleReasons::SW_POWER_CAP,
            ThrottleReasons::HW_SLOWDOWN,
            ThrottleReasons::SYNC_BOOST,
            ThrottleReasons::SW_THERMAL_SLOWDOWN,
            ThrottleReasons::HW_THERMAL_SLOWDOWN,
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        ] {
            assert!(limiting(&names(r | ThrottleReasons::GPU_IDLE)), "{r:?}");
        }
        assert_eq!(
            names(ThrottleReasons::SW_POWER_CAP | ThrottleReasons::GPU_IDLE),
            vec!["gpu_idle", "sw_power_cap"]
        );
    }

    #[test]
    fn no_cuda_device_answers_here_and_nothing_breaks() {
        // This machine has no GPU: the runtime (if loaded) reports an error, and a case
        // run without a watch gets no state.
        if !tch::Cuda::is_available() {
            assert_eq!(cuda_pci_bus_id(0), None);
        }
        let (v, state) = around(None, "cuda:0", || 7);
        assert_eq!((v, state), (7, None));
    }
}

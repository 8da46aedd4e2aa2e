//! The roofline on the CPU, end to end: `xarena run --roofline on` measures the peaks in
//! a subprocess and places every case against them.

mod common;

use common::{stderr, tmp, xarena, QUICK};
use xarena_reports::load::read_results;
use xarena_reports::schema::{Dtype, Status};

#[test]
fn a_cpu_run_with_the_roofline_records_peaks_and_fractions() {
    let out = tmp("roofline");
    let o = xarena()
        .args([
            "run",
            "--variants",
            "vanilla,sdpa",
            "--seq",
            "64",
            "--mode",
            "forward,train",
        ])
        .args(QUICK)
        .args(["--roofline", "on", "--out"])
        .arg(&out)
        // A small matmul keeps the test quick; the figures are still this machine's.
        .env("XARENA_ROOFLINE_SIZE", "512")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r.status, Status::Ok, "{:?}", r.message);
        let [peak] = r.env.roofline.as_slice() else {
            panic!("one peak for cpu f32: {:?}", r.env.roofline)
        };
        assert_eq!((peak.device.as_str(), peak.dtype), ("cpu", Dtype::F32));
        assert_eq!(peak.matmul_size, 512);
        assert!(peak.matmul_flops_per_s > 0.0 && peak.copy_bytes_per_s > 0.0);
        let f = r.peak_fraction.expect("a fraction of the peak");
        assert!(f > 0.0 && f < 1.5, "{}: {f}", r.label);
        let ratio = r.flops_per_s.unwrap() / peak.matmul_flops_per_s;
        assert!((f - ratio).abs() <= 1e-12 * ratio, "{f} vs {ratio}");
        assert!(r.intensity.is_some_and(|i| i > 0.0), "{:?}", r.intensity);
        // A CPU case has no GPU state; the CPU has no TF32 setting.
        assert!(r.gpu.is_none() && r.env.tf32.is_none());
    }
    // The report shows the fraction, with its legend.
    let o = xarena().arg("report").arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("% peak"), "{text}");
}

#[test]
fn the_roofline_is_off_on_the_cpu_by_default_and_checks_its_flag() {
    let out = tmp("roofline-auto");
    let o = xarena()
        .args(["run", "--variants", "sdpa", "--seq", "32"])
        .args(QUICK)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert!(records[0].env.roofline.is_empty() && records[0].peak_fraction.is_none());
    // Intensity needs no roofline.
    assert!(records[0].intensity.is_some());

    let o = xarena()
        .args(["run", "--roofline", "always", "--out"])
        .arg(tmp("roofline-bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--roofline"), "{}", stderr(&o));
}

//! `stop_running` against the real runc. A test binary of its own: stopping is for good in a
//! process (no container starts afterwards), so it must not share one with other tests.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use gantry_runtime::{Error, ExitStatus, RunSpec, Runtime, Stdio, write_bundle};

#[test]
fn stop_running_ends_the_running_container_and_refuses_new_ones() {
    gantry_test::require("runc");
    let rt = Runtime::detect(Some("runc")).expect("runc");
    let t = tempfile::Builder::new()
        .prefix("gantry-rt-")
        .tempdir()
        .unwrap();
    let rootfs = t.path().join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy(gantry_test::busybox(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let mut spec = RunSpec::new(&rootfs, vec!["sleep".into(), "600".into()]);
    spec.env = vec!["PATH=/bin".into()];
    let bundle = t.path().join("b");
    write_bundle(&bundle, &spec).unwrap();

    let stopper = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1500));
        gantry_runtime::stop_running()
    });
    let started = Instant::now();
    let result = rt.run(&bundle, "stopped", Stdio::Null);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(stopper.join().unwrap(), 1, "it found the running container");
    assert!(
        matches!(
            result,
            Ok(ExitStatus::Signaled(9)) | Err(Error::Runtime { .. })
        ),
        "{result:?}"
    );
    assert!(rt.list(&bundle).unwrap().is_empty());
    let again = rt.run(&bundle, "after", Stdio::Null);
    assert!(matches!(again, Err(Error::Interrupted)), "{again:?}");
    assert!(rt.list(&bundle).unwrap().is_empty());
}

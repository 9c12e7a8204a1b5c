use super::*;

#[test]
fn summarizes_registry_errors() {
    let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]}]}"#;
    assert_eq!(
        summarize_body(StatusCode::UNAUTHORIZED, body),
        "401 UNAUTHORIZED: authentication required"
    );
    let two = br#"{"errors":[{"code":"A","message":"x"},{"code":"B"}]}"#;
    assert_eq!(summarize_body(StatusCode::BAD_REQUEST, two), "400 A: x; B");
    assert_eq!(
        summarize_body(StatusCode::SERVICE_UNAVAILABLE, b"<html>oops</html>"),
        "503 Service Unavailable"
    );
    let evil =
        br#"{"errors":[{"code":"X","message":"see https://s3/x?X-Amz-Signature=canary\u0007"}]}"#;
    let s = summarize_body(StatusCode::FORBIDDEN, evil);
    assert!(!s.contains("canary") && !s.contains('\u{7}'), "{s}");
}

#[test]
fn origins_and_private_targets() {
    let u = |s: &str| Url::parse(s).unwrap();
    assert!(same_origin(&u("https://a:443/x"), &u("https://a/y")));
    assert!(!same_origin(&u("https://a/x"), &u("http://a/x")));
    assert!(!same_origin(&u("https://a/x"), &u("https://a:444/x")));
    assert!(!same_origin(&u("https://a/x"), &u("https://b/x")));
    let public = u("https://registry.example/");
    for bad in [
        "http://169.254.169.254/latest",
        "https://10.0.0.1/token",
        "https://127.0.0.1:5000/",
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://localhost/",
        "https://100.64.0.1/",
    ] {
        assert!(private_target(&public, &u(bad)).is_some(), "{bad}");
    }
    assert!(private_target(&public, &u("https://auth.example/token")).is_none());
    assert!(private_target(&public, &u("https://8.8.8.8/")).is_none());
    let local = u("http://127.0.0.1:5000/");
    assert!(private_target(&local, &u("http://127.0.0.2:6000/")).is_none());
}

#[test]
fn registry_names() {
    for ok in [
        "docker.io",
        "127.0.0.1:5000",
        "[::1]:5000",
        "my-reg.example.com",
    ] {
        validate_registry(ok).unwrap();
    }
    for bad in ["", "a/b", "a b", "user@host", "host?x", "host#x"] {
        assert!(validate_registry(bad).is_err(), "{bad}");
    }
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn clients_are_send_and_sync() {
    assert_send_sync::<Client>();
    assert_send_sync::<crate::Repo>();
    fn assert_send<T: Send>() {}
    assert_send::<crate::BlobReader>();
}

#[test]
fn docker_hub_goes_to_registry_1() {
    let c = Client::new(RegistryConfig::default(), Arc::new(crate::NoCredentials)).unwrap();
    let h = c.host("docker.io").unwrap();
    assert_eq!(h.base.as_str(), "https://registry-1.docker.io/");
    assert!(!h.insecure);
    let h = c.host("ghcr.io").unwrap();
    assert_eq!(h.base.as_str(), "https://ghcr.io/");
    assert!(c.host("bad host").is_err());
}

// T24: where a Bearer realm may be.
#[test]
fn realms_must_be_https_and_public_for_public_registries() {
    let c = Client::new(RegistryConfig::default(), Arc::new(crate::NoCredentials)).unwrap();
    let h = c.host("registry.example").unwrap();
    c.check_realm(&h, "https://auth.example/token").unwrap();
    for bad in [
        "http://auth.example/token",
        "https://10.0.0.1/token",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/token",
        "ftp://auth.example/token",
        "not a url",
        "",
    ] {
        let e = c.check_realm(&h, bad).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{bad}: {e:?}");
    }
    // Upload locations follow the same rules.
    let loc = Url::parse("http://registry.example/v2/x/blobs/uploads/1").unwrap();
    assert!(c.check_target(&h, &loc).is_err());
}

#[test]
fn access_scopes() {
    assert_eq!(Access::Pull("a/b".into()).scopes(), ["repository:a/b:pull"]);
    assert_eq!(
        Access::Mount {
            to: "t".into(),
            from: "f".into()
        }
        .scopes(),
        ["repository:t:pull,push", "repository:f:pull"]
    );
    assert!(Access::Registry.scopes().is_empty());
}

use super::*;
use crate::test_support::TestPki;

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    (dir, pki)
}

#[test]
fn plain_url_without_tls_files_builds() {
    build_client("redis://127.0.0.1:6379/", &RedisTlsFiles::default()).unwrap();
}

#[test]
fn rediss_without_a_ca_file_uses_the_platform_roots() {
    build_client("rediss://127.0.0.1:6380/", &RedisTlsFiles::default()).unwrap();
}

#[test]
fn rediss_with_ca_and_client_pair_builds() {
    let (_dir, pki) = pki();
    build_client("rediss://127.0.0.1:6380/", &pki.ca_only()).unwrap();
    build_client("rediss://127.0.0.1:6380/", &pki.mutual()).unwrap();
}

#[test]
fn tls_files_with_a_plain_url_are_refused() {
    let (_dir, pki) = pki();
    let err = build_client("redis://127.0.0.1:6379/", &pki.ca_only()).unwrap_err();
    assert_eq!(err.setting(), CA_FILE_SETTING);
    let text = err.to_string();
    assert!(text.contains("redis_ca_file") && text.contains("rediss://"), "{text}");
}

#[test]
fn a_client_certificate_needs_its_key_and_the_other_way_round() {
    let (_dir, pki) = pki();
    let cert_only = RedisTlsFiles { client_cert_file: Some(pki.client_cert.clone()), ..pki.ca_only() };
    let err = build_client("rediss://127.0.0.1:6380/", &cert_only).unwrap_err().to_string();
    assert!(err.contains("redis_client_key_file") && err.contains("redis_client_cert_file"), "{err}");
    let key_only = RedisTlsFiles { client_key_file: Some(pki.client_key.clone()), ..pki.ca_only() };
    let err = build_client("rediss://127.0.0.1:6380/", &key_only).unwrap_err();
    assert_eq!(err.setting(), CLIENT_CERT_FILE_SETTING);
}

#[test]
fn missing_unreadable_and_non_pem_files_name_the_setting_and_path() {
    let (dir, pki) = pki();
    let missing = dir.path().join("absent.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let garbage_pem = dir.path().join("garbage.pem");
    std::fs::write(&garbage_pem, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let cases = [
        (RedisTlsFiles { ca_file: Some(missing.clone()), ..Default::default() }, CA_FILE_SETTING, &missing),
        (
            RedisTlsFiles { ca_file: Some(dir.path().to_path_buf()), ..Default::default() },
            CA_FILE_SETTING,
            &dir.path().to_path_buf(),
        ),
        (RedisTlsFiles { ca_file: Some(not_pem.clone()), ..Default::default() }, CA_FILE_SETTING, &not_pem),
        (RedisTlsFiles { ca_file: Some(garbage_pem.clone()), ..Default::default() }, CA_FILE_SETTING, &garbage_pem),
        (RedisTlsFiles { client_cert_file: Some(not_pem.clone()), ..pki.mutual() }, CLIENT_CERT_FILE_SETTING, &not_pem),
        // A certificate where the key belongs.
        (
            RedisTlsFiles { client_key_file: Some(pki.client_cert.clone()), ..pki.mutual() },
            CLIENT_KEY_FILE_SETTING,
            &pki.client_cert,
        ),
    ];
    for (files, setting, path) in cases {
        let err = build_client("rediss://127.0.0.1:6380/", &files).unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        let text = err.to_string();
        assert!(text.contains(setting) && text.contains(&path.display().to_string()), "{text}");
    }
}

#[test]
fn a_bad_url_names_redis_url() {
    let err = build_client("http://127.0.0.1/", &RedisTlsFiles::default()).unwrap_err();
    assert_eq!(err.setting(), URL_SETTING);
}

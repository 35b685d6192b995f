//! The cluster CA and node certificates (rcgen). The CA's private key stays with the operator;
//! each node gets its certificate (DNS name = node id, usable as TLS server and client) and key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

const CA_CN: &str = "chat cluster CA";

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write_new(path: &Path, text: &str, force: bool, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() && !force {
        bail!("{} exists (use --force to replace it)", path.display());
    }
    // Created with its final mode: a private key is never readable by others, even briefly.
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Creates `ca.pem` and `ca.key` in `dir`.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_new(&key_path, &key.serialize_pem(), force, 0o600)?;
    write_new(&cert_path, &cert.pem(), force, 0o644)?;
    Ok(cert_path)
}

/// Issues `<node>.pem` and `<node>.key` in `dir`, signed by the CA in `dir`.
pub fn issue(dir: &Path, node: &str, force: bool) -> anyhow::Result<PathBuf> {
    let ca_key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "reading {} (run `chatctl certs init` first)",
            ca_key_path.display()
        )
    })?)?;
    // The issuer is identified by its subject and key: the same as in the stored ca.pem.
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut p = CertificateParams::new(vec![node.to_string()])
        .with_context(|| format!("{node:?} is not a valid DNS name"))?;
    p.distinguished_name.push(DnType::CommonName, node);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), force, 0o600)?;
    write_new(&cert_path, &cert.pem(), force, 0o644)?;
    Ok(cert_path)
}

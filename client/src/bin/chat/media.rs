//! Files: `chat send --file` asks the home node for an upload slot, PUTs the bytes straight to
//! the blob store, and names the upload in the message; `chat fetch` asks for a download URL
//! for the file of a message in the inbox and checks the bytes against its SHA-256.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_client::v1::{deliver, media_request, Attachment, MediaDownload, MediaReply, MediaUpload};
use chat_client::Client;
use sha2::Digest as _;

fn http() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?)
}

/// The answer to a media request, or the node's refusal as an error.
async fn ask(c: &mut Client, op: media_request::Op) -> anyhow::Result<MediaReply> {
    Ok(c.media(op, Duration::from_secs(30), &mut Vec::new())
        .await?)
}

fn rate(bytes: usize, took: Duration) -> String {
    let mb = bytes as f64 / 1e6;
    format!(
        "{mb:.2} MB in {:.2} s, {:.1} MB/s",
        took.as_secs_f64(),
        mb / took.as_secs_f64().max(1e-6)
    )
}

/// Uploads `path` (its type guessed from its name unless `mime` is given) and returns the
/// attachment that names it.
pub async fn upload(
    c: &mut Client,
    path: &Path,
    mime: Option<String>,
) -> anyhow::Result<Attachment> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let mime = mime.unwrap_or_else(|| {
        mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_string()
    });
    let sha = hex(&sha2::Sha256::digest(&bytes));
    let slot = ask(
        c,
        media_request::Op::Upload(MediaUpload {
            mime: mime.clone(),
            size: bytes.len() as u64,
            sha256: sha.clone(),
        }),
    )
    .await?;
    let started = Instant::now();
    let size = bytes.len();
    let mut req = http()?.put(&slot.url).body(bytes);
    for h in &slot.headers {
        req = req.header(&h.name, &h.value);
    }
    let resp = req.send().await.context("uploading")?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "upload refused ({status}): {}",
            resp.text().await.unwrap_or_default()
        );
    }
    eprintln!(
        "uploaded {} ({mime}): {}",
        slot.media_id,
        rate(size, started.elapsed())
    );
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Attachment {
        media_id: slot.media_id,
        mime,
        size: size as u64,
        sha256: sha,
        name,
        ..Default::default()
    })
}

/// Fetches the file of the message at `seq` into `out` (default: its name, in the current
/// directory) and checks its SHA-256.
pub async fn fetch(c: &mut Client, seq: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let mut other = Vec::new();
    let page = c
        .history(seq + 1, 1, Duration::from_secs(30), &mut other)
        .await?;
    let att = match page.entries.first() {
        Some(d) if d.seq == seq => match &d.entry {
            Some(deliver::Entry::Message(m)) => m.attachment.clone(),
            _ => None,
        },
        _ => bail!("no entry at seq {seq} (expired, or not in your inbox)"),
    };
    let Some(att) = att else {
        bail!("the entry at seq {seq} has no file");
    };
    let url = ask(
        c,
        media_request::Op::Download(MediaDownload {
            media_id: att.media_id.clone(),
            seq,
        }),
    )
    .await?;
    let out = out.unwrap_or_else(|| {
        let name = Path::new(&att.name).file_name().map(PathBuf::from);
        name.unwrap_or_else(|| PathBuf::from(&att.media_id))
    });
    let started = Instant::now();
    let mut resp = http()?.get(&url.url).send().await.context("downloading")?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "download refused ({status}): {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let mut hasher = sha2::Sha256::new();
    let mut data = Vec::with_capacity(att.size as usize);
    while let Some(chunk) = resp.chunk().await? {
        hasher.update(&chunk);
        data.extend_from_slice(&chunk);
    }
    let took = started.elapsed();
    if hex(&hasher.finalize()) != att.sha256 {
        bail!("the bytes do not match the message's sha256: not saved");
    }
    tokio::fs::write(&out, &data)
        .await
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "fetched {} ({}): {}",
        out.display(),
        att.mime,
        rate(data.len(), took)
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

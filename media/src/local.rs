//! The embedded blob store: one file per blob in a directory on the node's disk, for a laptop
//! and the dev cluster. An upload is written to a temporary file, checked against the size and
//! SHA-256 of its slot while it streams in, made durable (fsync), and only then renamed into
//! place, so a blob is either absent or complete and exactly what its slot promised.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::id::{Digest, MediaId};
use crate::BlobError;

/// A directory of blobs: `<dir>/<day>/<id>` (the UTC day the id was made, see
/// [`MediaId::day`]), and `<dir>/tmp` for uploads in progress (emptied on open).
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// Opens (creating) the store at `dir`, removing uploads a crash left half-written.
    pub async fn open(dir: impl Into<PathBuf>) -> std::io::Result<LocalBlobs> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        if tokio::fs::try_exists(&tmp).await? {
            tokio::fs::remove_dir_all(&tmp).await?;
        }
        tokio::fs::create_dir_all(&tmp).await?;
        Ok(LocalBlobs { dir })
    }

    fn path(&self, id: &MediaId) -> PathBuf {
        self.dir.join(id.day().to_string()).join(id.as_str())
    }

    /// Removes every blob made before `day`, a day's folder at a time; returns the blobs removed.
    pub async fn expire_before(&self, day: u64) -> std::io::Result<u64> {
        let mut removed = 0;
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name();
            let Some(d) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue; // tmp
            };
            if d < day {
                let mut files = tokio::fs::read_dir(e.path()).await?;
                while files.next_entry().await?.is_some() {
                    removed += 1;
                }
                tokio::fs::remove_dir_all(e.path()).await?;
            }
        }
        Ok(removed)
    }

    /// Stores the bytes of `body` as blob `id`, which must be exactly `size` bytes hashing to
    /// `sha256`: more bytes stop the upload at once, fewer or other bytes are refused at the
    /// end, and nothing is kept either way. Putting the same blob again is harmless.
    pub async fn put<S, E>(
        &self,
        id: &MediaId,
        size: u64,
        sha256: Digest,
        body: S,
    ) -> Result<(), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let tmp = TempFile(
            self.dir
                .join("tmp")
                .join(format!("{id}.{}", uuid::Uuid::now_v7().simple())),
        );
        write_checked(&tmp.0, size, sha256, body).await?;
        let dest = self.path(id);
        let folder = dest.parent().expect("a blob path has a folder");
        let new_folder = !tokio::fs::try_exists(folder).await?;
        tokio::fs::create_dir_all(folder).await?;
        if new_folder {
            // The new day folder's own entry is durable once its parent is.
            sync_dir(&self.dir).await?;
        }
        tokio::fs::rename(&tmp.0, &dest).await?;
        std::mem::forget(tmp);
        // The rename is durable once the folder is.
        sync_dir(folder).await?;
        Ok(())
    }

    /// The blob's size, or `None` if it is not stored.
    pub async fn size(&self, id: &MediaId) -> std::io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(id)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The blob opened for reading with its size, or `None` if it is not stored.
    pub async fn open_blob(&self, id: &MediaId) -> std::io::Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the blob; true if it was there.
    pub async fn delete(&self, id: &MediaId) -> std::io::Result<bool> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// An upload in progress: removed when dropped, so an upload that fails, or whose client goes
/// away (the request's future is dropped mid-stream), leaves nothing behind. Forgotten once
/// renamed into place.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

async fn write_checked<S, E>(
    tmp: &Path,
    size: u64,
    sha256: Digest,
    body: S,
) -> Result<(), BlobError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create_new(tmp).await?;
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
        got += chunk.len() as u64;
        if got > size {
            return Err(BlobError::TooLarge { limit: size });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    if got != size {
        return Err(BlobError::SizeMismatch { got, want: size });
    }
    if Digest(hasher.finalize().into()) != sha256 {
        return Err(BlobError::DigestMismatch);
    }
    // tokio finishes a write in the background: flush reports its error, which sync_all
    // would drop, and a short file would then be renamed into place.
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, String>> {
        let parts: Vec<Result<Bytes, String>> = data
            .chunks(size.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(parts)
    }

    async fn tmp_files(store: &LocalBlobs) -> usize {
        let mut n = 0;
        let mut rd = tokio::fs::read_dir(store.dir.join("tmp")).await.unwrap();
        while rd.next_entry().await.unwrap().is_some() {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_blob_is_stored_only_if_size_and_hash_match_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path()).await.unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (size, sha) = (data.len() as u64, Digest::of(&data));

        let id = MediaId::generate();
        let short = store
            .put(&id, size, sha, chunks(&data[..99_999], 4096))
            .await;
        assert!(
            matches!(short, Err(BlobError::SizeMismatch { got: 99_999, .. })),
            "{short:?}"
        );
        let mut longer = data.clone();
        longer.push(0);
        let long = store.put(&id, size, sha, chunks(&longer, 4096)).await;
        assert!(matches!(long, Err(BlobError::TooLarge { .. })), "{long:?}");
        let mut other = data.clone();
        other[5] ^= 1;
        let wrong = store.put(&id, size, sha, chunks(&other, 4096)).await;
        assert!(matches!(wrong, Err(BlobError::DigestMismatch)), "{wrong:?}");
        let cut = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err("connection reset".to_string()),
        ]);
        assert!(matches!(
            store.put(&id, size, sha, cut).await,
            Err(BlobError::Body(_))
        ));
        assert_eq!(store.size(&id).await.unwrap(), None);
        assert_eq!(
            tmp_files(&store).await,
            0,
            "refused uploads leave nothing behind"
        );

        store
            .put(&id, size, sha, chunks(&data, 4096))
            .await
            .unwrap();
        assert_eq!(store.size(&id).await.unwrap(), Some(size));
        let (mut f, len) = store.open_blob(&id).await.unwrap().unwrap();
        assert_eq!(len, size);
        let mut back = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut f, &mut back)
            .await
            .unwrap();
        assert_eq!(back, data);
        // Again: harmless.
        store.put(&id, size, sha, chunks(&data, 999)).await.unwrap();

        assert!(store.delete(&id).await.unwrap());
        assert!(!store.delete(&id).await.unwrap());
        assert!(store.open_blob(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expiry_removes_whole_days_before_the_one_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path()).await.unwrap();
        let today = MediaId::generate();
        let old = MediaId::parse("m0000000000007000800000000000000a").unwrap();
        assert_eq!(old.day(), 0);
        for id in [&today, &old] {
            store
                .put(id, 3, Digest::of(b"abc"), chunks(b"abc", 3))
                .await
                .unwrap();
        }
        assert_eq!(store.expire_before(today.day()).await.unwrap(), 1);
        assert_eq!(store.size(&old).await.unwrap(), None);
        assert_eq!(store.size(&today).await.unwrap(), Some(3));
        assert_eq!(store.expire_before(today.day()).await.unwrap(), 0);
        assert_eq!(tmp_files(&store).await, 0, "tmp is not a day");
    }

    #[tokio::test]
    async fn opening_clears_uploads_a_crash_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path()).await.unwrap();
        tokio::fs::write(dir.path().join("tmp").join("half"), b"x")
            .await
            .unwrap();
        let store2 = LocalBlobs::open(dir.path()).await.unwrap();
        assert_eq!(tmp_files(&store2).await, 0);
        drop(store);
    }
}

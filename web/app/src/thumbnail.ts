// A small JPEG preview of an image, sent inside the message so the recipient sees something
// before it fetches the file. Kept under the node's limit (`welcome.limits.maxThumbnailBytes`).

const EDGE = 96;

export async function thumbnail(file: Blob, maxBytes: number): Promise<Uint8Array | undefined> {
  if (!file.type.startsWith('image/') || maxBytes <= 0) return undefined;
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, EDGE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement('canvas');
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext('2d')?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    for (const quality of [0.7, 0.4]) {
      const blob = await new Promise<Blob | null>((done) => canvas.toBlob(done, 'image/jpeg', quality));
      if (blob && blob.size <= maxBytes) return new Uint8Array(await blob.arrayBuffer());
    }
  } catch {
    // Not an image the browser can decode: send it without a preview.
  }
  return undefined;
}

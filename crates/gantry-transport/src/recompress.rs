//! Recompressing the layers of an image (`gantry copy --recompress`).

use gantry_image::{BlobSource, SourceImage};
use gantry_layer::{Compressor, Limits, TarImport};
use gantry_oci::media_types as mt;
use gantry_oci::{Descriptor, ImageConfig, json};

use crate::error::image_error;
use crate::{Error, Transfer};

impl Transfer<'_> {
    /// The image with every layer recompressed into the store (`jobs` compression threads,
    /// the tar read within `limits`): a new OCI manifest with the same config, whose diff_ids
    /// each new layer is checked against. Registry layers are streamed, not kept.
    pub fn recompress(
        &self,
        img: &SourceImage,
        compressor: Compressor,
        jobs: usize,
        limits: &Limits,
    ) -> Result<SourceImage, Error> {
        let config = ImageConfig::parse(&img.config_bytes, &format!("{}: config", img.name))?;
        let mut layers = Vec::with_capacity(img.layers.len());
        for (i, (desc, source)) in img.layers.iter().enumerate() {
            let what = format!("layer {i} ({})", desc.digest);
            let reader = self.stream_blob(desc, source)?;
            let writer = self.store.blob_writer()?;
            let (writer, imported) = gantry_layer::tarread::import_tar_from(
                reader,
                &what,
                TarImport::Recompress(compressor),
                jobs,
                writer,
                limits,
            )?;
            let (digest, size) = writer.commit(None)?;
            if config.rootfs.diff_ids.get(i) != Some(&imported.diff_id) {
                return Err(image_error(
                    what,
                    "its content does not match the config's diff_id",
                ));
            }
            let new = Descriptor::new(compressor.media_type(), digest, size);
            layers.push((new, BlobSource::Store));
        }
        let mut manifest = img.manifest.clone();
        manifest.media_type = Some(mt::OCI_MANIFEST.to_owned());
        manifest.config.media_type = mt::OCI_CONFIG.to_owned();
        manifest.layers = layers.iter().map(|(d, _)| d.clone()).collect();
        let manifest_bytes = json::to_canonical_vec(&manifest);
        let mut descriptor = Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest_bytes);
        descriptor.platform.clone_from(&img.descriptor.platform);
        Ok(SourceImage {
            name: img.name.clone(),
            descriptor,
            manifest_bytes,
            manifest,
            config_bytes: img.config_bytes.clone(),
            layers,
        })
    }
}

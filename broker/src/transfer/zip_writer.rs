//! A streaming zip writer that takes entry data already deflated elsewhere.
//!
//! Why not the `zip` crate's writer: it compresses each entry on the calling thread, so packing
//! runs at one core's deflate speed, and its only way to add pre-compressed data
//! (`add_prepared_file`) holds a whole entry in memory. Packing here deflates chunks of one file
//! on several threads (`deflate_pool`) and streams them out in order, which needs a writer that
//! accepts raw deflate bytes and learns the CRC and sizes at the end. The `zip` crate still
//! reads every archive (extraction and the tests).
//!
//! The records are those of APPNOTE 6.3 as Go's `archive/zip` (what GitLab reads) writes them:
//! unix "version made by" with the mode in the external attributes, the UTF-8 flag for non-ASCII
//! names, the extended-timestamp field (0x5455) with the modification time, and zip64 fields
//! only where a size, an offset or the entry count needs them. The output seeks back to fill in
//! each local header once its entry is written (no data descriptors).

use std::io::{self, Seek, SeekFrom, Write};

use super::dos_time::zip_time;

/// How an entry's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored = 0,
    Deflated = 8,
}

/// What the local and central headers of one entry say besides CRC, sizes and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The archive name: `/`-separated, a directory's ending in `/`.
    pub name: String,
    pub method: Method,
    /// The unix `st_mode` (type and permission bits), kept in the external attributes.
    pub mode: u32,
    /// Modification time, unix seconds.
    pub mtime: i64,
    /// The local header carries zip64 sizes: set for entries that may reach 4 GiB, decided
    /// before the data is written (the local header's length cannot change afterwards).
    pub zip64: bool,
}

const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const END_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_END_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const TIMESTAMP_EXTRA_ID: u16 = 0x5455;
/// "Version made by": unix (3) in the high byte.
const MADE_BY_UNIX: u16 = 3 << 8;
const VERSION_20: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// General purpose flag bit 11: the name is UTF-8.
const FLAG_UTF8: u16 = 1 << 11;
/// The MS-DOS directory attribute, set beside the unix mode for directories (as Go does).
const DOS_DIRECTORY: u32 = 0x10;
const U32_FULL: u64 = 0xFFFF_FFFF;
const U16_FULL: u64 = 0xFFFF;

/// One finished entry, as the central directory lists it.
#[derive(Debug, Clone)]
struct Finished {
    header: Header,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
}

/// The entry being written.
#[derive(Debug)]
struct Open {
    header: Header,
    offset: u64,
    compressed: u64,
}

/// Writes a zip archive entry by entry: [`begin`](Self::begin), its (already compressed)
/// [`data`](Self::data), [`end`](Self::end) with the CRC and size of the uncompressed data;
/// then [`finish`](Self::finish) writes the central directory.
pub struct ZipStream<W: Write + Seek> {
    out: W,
    offset: u64,
    open: Option<Open>,
    finished: Vec<Finished>,
}

impl<W: Write + Seek> ZipStream<W> {
    /// Starts an archive at the output's current position, taken as offset 0.
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            open: None,
            finished: Vec::new(),
        }
    }

    /// Writes the local header of a new entry (CRC and sizes zero until [`end`](Self::end)).
    ///
    /// # Errors
    /// An entry is still open, the name does not fit a header, or the output fails.
    pub fn begin(&mut self, header: Header) -> io::Result<()> {
        if self.open.is_some() {
            return Err(io::Error::other("zip: an entry is already open"));
        }
        let bytes = local_header(&header, 0, 0, 0)?;
        self.out.write_all(&bytes)?;
        self.open = Some(Open {
            header,
            offset: self.offset,
            compressed: 0,
        });
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends stored or deflated bytes of the open entry.
    ///
    /// # Errors
    /// No entry is open, or the output fails.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| io::Error::other("zip: data outside an entry"))?;
        self.out.write_all(bytes)?;
        open.compressed += bytes.len() as u64;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Closes the open entry: fills in its local header with `crc` and the uncompressed
    /// `size`, and keeps it for the central directory.
    ///
    /// # Errors
    /// No entry is open, its sizes need zip64 but its local header was written without
    /// (a file that grew past 4 GiB while it was packed), or the output fails.
    pub fn end(&mut self, crc: u32, size: u64) -> io::Result<()> {
        let open = self
            .open
            .take()
            .ok_or_else(|| io::Error::other("zip: no entry to end"))?;
        let header = local_header(&open.header, crc, open.compressed, size)?;
        let end = self.out.stream_position()?;
        let start = end - (self.offset - open.offset);
        self.out.seek(SeekFrom::Start(start))?;
        self.out.write_all(&header)?;
        self.out.seek(SeekFrom::Start(end))?;
        self.finished.push(Finished {
            header: open.header,
            crc,
            compressed: open.compressed,
            size,
            offset: open.offset,
        });
        Ok(())
    }

    /// Writes the central directory and its end records, and hands back the output.
    ///
    /// # Errors
    /// An entry is still open, or the output fails.
    pub fn finish(mut self) -> io::Result<W> {
        if self.open.is_some() {
            return Err(io::Error::other("zip: an entry is still open"));
        }
        let directory_offset = self.offset;
        let mut directory = Vec::new();
        for entry in &self.finished {
            directory.extend_from_slice(&central_header(entry));
        }
        self.out.write_all(&directory)?;
        let end = end_records(
            self.finished.len() as u64,
            directory.len() as u64,
            directory_offset,
        );
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Little-endian record builder.
#[derive(Default)]
struct Record(Vec<u8>);

impl Record {
    fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.0.extend_from_slice(value);
        self
    }
}

/// A 32-bit field, or the zip64 marker when the value needs the zip64 field.
fn u32_or_marker(value: u64) -> u32 {
    u32::try_from(value)
        .ok()
        .filter(|v| u64::from(*v) < U32_FULL)
        .unwrap_or(u32::MAX)
}

fn u16_len(len: usize, what: &str) -> io::Result<u16> {
    u16::try_from(len)
        .map_err(|_| io::Error::other(format!("zip: {what} of {len} bytes does not fit a header")))
}

/// The extended-timestamp extra field with the modification time, when it fits its 32 bits.
fn timestamp_extra(mtime: i64) -> Vec<u8> {
    let Ok(mtime) = u32::try_from(mtime) else {
        return Vec::new();
    };
    let mut record = Record::default();
    record.u16(TIMESTAMP_EXTRA_ID).u16(5).bytes(&[1]).u32(mtime);
    record.0
}

fn flags(name: &str) -> u16 {
    if name.is_ascii() { 0 } else { FLAG_UTF8 }
}

fn version(zip64: bool) -> u16 {
    if zip64 { VERSION_ZIP64 } else { VERSION_20 }
}

/// The local file header of `header` with these CRC and sizes.
fn local_header(header: &Header, crc: u32, compressed: u64, size: u64) -> io::Result<Vec<u8>> {
    let fits = compressed < U32_FULL && size < U32_FULL;
    if !header.zip64 && !fits {
        return Err(io::Error::other(format!(
            "zip: {} grew past 4 GiB while it was packed; its header has no room for the size",
            header.name
        )));
    }
    let mut extra = Record::default();
    if header.zip64 {
        extra.u16(ZIP64_EXTRA_ID).u16(16).u64(size).u64(compressed);
    }
    extra.bytes(&timestamp_extra(header.mtime));
    let time = zip_time(header.mtime);
    let (size32, compressed32) = if header.zip64 {
        (u32::MAX, u32::MAX)
    } else {
        (u32_or_marker(size), u32_or_marker(compressed))
    };
    let mut record = Record::default();
    record
        .u32(LOCAL_SIGNATURE)
        .u16(version(header.zip64))
        .u16(flags(&header.name))
        .u16(header.method as u16)
        .u16(time.timepart())
        .u16(time.datepart())
        .u32(crc)
        .u32(compressed32)
        .u32(size32)
        .u16(u16_len(header.name.len(), "an entry name")?)
        .u16(u16_len(extra.0.len(), "extra data")?)
        .bytes(header.name.as_bytes())
        .bytes(&extra.0);
    Ok(record.0)
}

/// The central directory header of a finished entry.
fn central_header(entry: &Finished) -> Vec<u8> {
    let mut zip64 = Record::default();
    for value in [entry.size, entry.compressed, entry.offset] {
        if value >= U32_FULL {
            zip64.u64(value);
        }
    }
    let needs_zip64 = !zip64.0.is_empty();
    let mut extra = Record::default();
    if needs_zip64 {
        // At most three u64 fields: 24 bytes.
        extra
            .u16(ZIP64_EXTRA_ID)
            .u16(zip64.0.len() as u16)
            .bytes(&zip64.0);
    }
    extra.bytes(&timestamp_extra(entry.header.mtime));
    let header = &entry.header;
    let time = zip_time(header.mtime);
    let directory = if header.name.ends_with('/') {
        DOS_DIRECTORY
    } else {
        0
    };
    let mut record = Record::default();
    record
        .u32(CENTRAL_SIGNATURE)
        .u16(MADE_BY_UNIX | version(needs_zip64 || header.zip64))
        .u16(version(needs_zip64 || header.zip64))
        .u16(flags(&header.name))
        .u16(header.method as u16)
        .u16(time.timepart())
        .u16(time.datepart())
        .u32(entry.crc)
        .u32(u32_or_marker(entry.compressed))
        .u32(u32_or_marker(entry.size))
        // Both checked by `local_header` when the entry began (the extra here is no longer:
        // at most 28 bytes of zip64 plus 9 of timestamp).
        .u16(header.name.len() as u16)
        .u16(extra.0.len() as u16)
        .u16(0) // comment length
        .u16(0) // disk number
        .u16(0) // internal attributes
        .u32((header.mode << 16) | directory)
        .u32(u32_or_marker(entry.offset))
        .bytes(header.name.as_bytes())
        .bytes(&extra.0);
    record.0
}

/// The end of central directory record, preceded by the zip64 end record and its locator
/// when the entry count, the directory's size or its offset need them.
fn end_records(entries: u64, directory_size: u64, directory_offset: u64) -> Vec<u8> {
    let mut record = Record::default();
    let zip64 = entries >= U16_FULL || directory_size >= U32_FULL || directory_offset >= U32_FULL;
    if zip64 {
        let zip64_end_offset = directory_offset + directory_size;
        record
            .u32(ZIP64_END_SIGNATURE)
            .u64(44) // the size of the rest of this record
            .u16(MADE_BY_UNIX | VERSION_ZIP64)
            .u16(VERSION_ZIP64)
            .u32(0) // this disk
            .u32(0) // the disk with the central directory
            .u64(entries)
            .u64(entries)
            .u64(directory_size)
            .u64(directory_offset)
            .u32(ZIP64_LOCATOR_SIGNATURE)
            .u32(0) // the disk with the zip64 end record
            .u64(zip64_end_offset)
            .u32(1); // disks in all
    }
    let entries16 = u16::try_from(entries.min(U16_FULL)).unwrap_or(u16::MAX);
    record
        .u32(END_SIGNATURE)
        .u16(0)
        .u16(0)
        .u16(entries16)
        .u16(entries16)
        .u32(u32_or_marker(directory_size))
        .u32(u32_or_marker(directory_offset))
        .u16(0); // comment length
    record.0
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read as _};

    use super::*;

    fn stored(name: &str, mode: u32, zip64: bool) -> Header {
        Header {
            name: name.to_owned(),
            method: Method::Stored,
            mode,
            mtime: 1_764_000_000,
            zip64,
        }
    }

    fn write_stored(zip: &mut ZipStream<Cursor<Vec<u8>>>, header: Header, content: &[u8]) {
        zip.begin(header).unwrap();
        zip.data(content).unwrap();
        zip.end(crc32fast::hash(content), content.len() as u64)
            .unwrap();
    }

    #[test]
    fn entries_read_back_with_names_modes_times_and_contents() {
        let mut zip = ZipStream::new(Cursor::new(Vec::new()));
        write_stored(&mut zip, stored("dir/", 0o40755, false), b"");
        write_stored(&mut zip, stored("dir/ä.txt", 0o100640, false), b"hello");
        write_stored(
            &mut zip,
            stored("dir/big", 0o100600, true),
            b"zip64 local header",
        );
        write_stored(
            &mut zip,
            stored("link", 0o120777, false),
            "dir/ä.txt".as_bytes(),
        );
        let bytes = zip.finish().unwrap().into_inner();

        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(archive.len(), 4);
        let want = [
            ("dir/", 0o40755, ""),
            ("dir/ä.txt", 0o100640, "hello"),
            ("dir/big", 0o100600, "zip64 local header"),
            ("link", 0o120777, "dir/ä.txt"),
        ];
        for (i, (name, mode, content)) in want.into_iter().enumerate() {
            let mut entry = archive.by_index(i).unwrap();
            assert_eq!(entry.name().unwrap(), name);
            assert_eq!(entry.unix_mode(), Some(mode), "{name}");
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            assert_eq!(text, content);
            let time = entry.last_modified().unwrap();
            assert_eq!(super::super::dos_time::unix_time(&time), 1_764_000_000);
        }
    }

    #[test]
    fn more_entries_than_sixteen_bits_get_the_zip64_end_records() {
        let mut zip = ZipStream::new(Cursor::new(Vec::new()));
        let count = 70_000;
        for i in 0..count {
            write_stored(&mut zip, stored(&format!("d{i}/"), 0o40755, false), b"");
        }
        let bytes = zip.finish().unwrap().into_inner();
        let archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(archive.len(), count);
        assert_eq!(
            archive.name_for_index(count - 1).unwrap().unwrap(),
            "d69999/"
        );
    }

    #[test]
    fn large_sizes_and_offsets_use_zip64_fields_in_the_central_directory() {
        let entry = Finished {
            header: stored("big", 0o100644, true),
            crc: 7,
            compressed: 5 << 30,
            size: 6 << 30,
            offset: 4 << 30,
        };
        let record = central_header(&entry);
        // Sizes and offset are zip64 markers; the extra holds size, compressed, offset.
        assert_eq!(&record[20..28], &[0xFF; 8]);
        assert_eq!(&record[42..46], &[0xFF; 4]);
        let extra = &record[46 + 3..];
        assert_eq!(&extra[..4], &[0x01, 0x00, 24, 0]);
        assert_eq!(extra[4..12], (6u64 << 30).to_le_bytes());
        assert_eq!(extra[12..20], (5u64 << 30).to_le_bytes());
        assert_eq!(extra[20..28], (4u64 << 30).to_le_bytes());
        let end = end_records(1, 100, 4 << 30);
        assert_eq!(end[..4], ZIP64_END_SIGNATURE.to_le_bytes());
    }

    #[test]
    fn a_file_that_outgrows_its_header_is_an_error_not_a_corrupt_archive() {
        let header = stored("grew", 0o100644, false);
        let error = local_header(&header, 0, 1, U32_FULL).unwrap_err();
        assert!(error.to_string().contains("grew past 4 GiB"), "{error}");
        assert!(local_header(&stored("fine", 0o100644, true), 0, 1, U32_FULL).is_ok());
    }

    #[test]
    fn misuse_is_an_error() {
        let mut zip = ZipStream::new(Cursor::new(Vec::new()));
        assert!(zip.data(b"x").is_err());
        assert!(zip.end(0, 0).is_err());
        zip.begin(stored("a", 0o100644, false)).unwrap();
        assert!(zip.begin(stored("b", 0o100644, false)).is_err());
        assert!(zip.finish().is_err());
        let long = "n".repeat(70_000);
        let mut zip = ZipStream::new(Cursor::new(Vec::new()));
        assert!(zip.begin(stored(&long, 0o100644, false)).is_err());
    }
}

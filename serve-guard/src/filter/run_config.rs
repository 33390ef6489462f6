//! `xdp_priority` written into the program's libxdp run configuration before it is loaded.
//!
//! libxdp takes the run priority of a program it did not load from the program's BTF (the
//! `.xdp_run_config` struct, see `serve_guard_common::run_config`) and refuses to change it
//! afterwards. The value is the length of an array type: this rewrites that length in the
//! object's `.BTF` section, in place (same size), so the kernel gets the configured priority with
//! the program and libxdp reads it from there.

use serve_guard_common::run_config;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot set the run priority in the eBPF object's BTF: {0}")]
pub struct RunConfigError(&'static str);

/// A copy of `object` whose run configuration says `priority`.
pub fn with_priority(object: &[u8], priority: u32) -> Result<Vec<u8>, RunConfigError> {
    let at = priority_offset(object)?;
    let mut out = object.to_vec();
    out[at..at + 4].copy_from_slice(&priority.to_le_bytes());
    Ok(out)
}

/// The run priority the object's BTF says.
pub fn priority(object: &[u8]) -> Result<u32, RunConfigError> {
    let at = priority_offset(object)?;
    read_u32(object, at)
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER: usize = 12;
/// Offset of `nelems` in an array type's `struct btf_array` (type, index_type, nelems).
const ARRAY_NELEMS: usize = TYPE_HEADER + 8;

fn read_u16(b: &[u8], at: usize) -> Result<u16, RunConfigError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(RunConfigError("truncated"))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, RunConfigError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(RunConfigError("truncated"))
}

fn read_u64(b: &[u8], at: usize) -> Result<u64, RunConfigError> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(RunConfigError("truncated"))
}

fn c_str(b: &[u8], at: usize) -> Result<&[u8], RunConfigError> {
    let rest = b.get(at..).ok_or(RunConfigError("string out of range"))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or(RunConfigError("unterminated string"))?;
    Ok(&rest[..end])
}

/// (offset, size) of the ELF64 section `name`.
fn section(elf: &[u8], name: &str) -> Result<(usize, usize), RunConfigError> {
    let shoff = read_u64(elf, 0x28)? as usize;
    let shentsize = usize::from(read_u16(elf, 0x3a)?);
    let shnum = usize::from(read_u16(elf, 0x3c)?);
    let shstrndx = usize::from(read_u16(elf, 0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = read_u64(elf, header(shstrndx) + 24)? as usize;
    for i in 0..shnum {
        let name_off = read_u32(elf, header(i))? as usize;
        if c_str(elf, strtab + name_off)? == name.as_bytes() {
            let offset = read_u64(elf, header(i) + 24)? as usize;
            let size = read_u64(elf, header(i) + 32)? as usize;
            return Ok((offset, size));
        }
    }
    Err(RunConfigError("no .BTF section"))
}

/// Where, in `object`, the priority array's `nelems` is.
fn priority_offset(object: &[u8]) -> Result<usize, RunConfigError> {
    let (btf, _) = section(object, ".BTF")?;
    if read_u16(object, btf)? != BTF_MAGIC {
        return Err(RunConfigError("bad BTF magic"));
    }
    let hdr_len = read_u32(object, btf + 4)? as usize;
    let types = btf + hdr_len + read_u32(object, btf + 8)? as usize;
    let types_end = types + read_u32(object, btf + 12)? as usize;
    let strings = btf + hdr_len + read_u32(object, btf + 16)? as usize;
    let name = |off: u32| c_str(object, strings + off as usize);

    // Type ids start at 1; `offsets[id]` is where type `id` starts.
    let mut offsets = vec![0usize];
    let mut at = types;
    while at < types_end {
        offsets.push(at);
        let info = read_u32(object, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        at += TYPE_HEADER
            + match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
    }
    let kind_of = |id: usize| -> Result<(usize, u32), RunConfigError> {
        let at = *offsets
            .get(id)
            .filter(|&&a| a != 0)
            .ok_or(RunConfigError("type id out of range"))?;
        Ok((at, (read_u32(object, at + 4)? >> 24) & 0x1f))
    };
    // Follows typedefs and qualifiers to the type they name.
    let resolve = |mut id: usize| -> Result<(usize, u32), RunConfigError> {
        loop {
            let (at, kind) = kind_of(id)?;
            match kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = read_u32(object, at + 8)? as usize;
                }
                _ => return Ok((at, kind)),
            }
        }
    };

    let var = offsets[1..]
        .iter()
        .copied()
        .find(|&at| {
            read_u32(object, at + 4).is_ok_and(|info| (info >> 24) & 0x1f == KIND_VAR)
                && read_u32(object, at)
                    .and_then(name)
                    .is_ok_and(|n| n == run_config::VAR.as_bytes())
        })
        .ok_or(RunConfigError(
            "no run configuration variable (built without it?)",
        ))?;
    let (config, kind) = resolve(read_u32(object, var + 8)? as usize)?;
    if kind != KIND_STRUCT {
        return Err(RunConfigError("the run configuration is not a struct"));
    }
    let members = (read_u32(object, config + 4)? & 0xffff) as usize;
    for m in 0..members {
        let member = config + TYPE_HEADER + 12 * m;
        if name(read_u32(object, member)?)? != run_config::PRIORITY_FIELD.as_bytes() {
            continue;
        }
        let (ptr, kind) = resolve(read_u32(object, member + 4)? as usize)?;
        if kind != KIND_PTR {
            return Err(RunConfigError("the priority field is not a pointer"));
        }
        let (array, kind) = resolve(read_u32(object, ptr + 8)? as usize)?;
        if kind != KIND_ARRAY {
            return Err(RunConfigError(
                "the priority field does not point to an array",
            ));
        }
        return Ok(array + ARRAY_NELEMS);
    }
    Err(RunConfigError("no priority field in the run configuration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::object::OBJECT;

    #[test]
    fn the_embedded_object_carries_the_default_priority() {
        assert_eq!(priority(OBJECT), Ok(run_config::DEFAULT_PRIORITY as u32));
    }

    #[test]
    fn a_priority_is_written_in_place() {
        let patched = with_priority(OBJECT, 42).unwrap();
        assert_eq!(patched.len(), OBJECT.len());
        assert_eq!(priority(&patched), Ok(42));
        let differing = OBJECT.iter().zip(&patched).filter(|(a, b)| a != b).count();
        assert!(differing <= 4, "{differing} bytes changed");
    }

    #[test]
    fn an_object_without_btf_is_refused() {
        assert!(priority(b"not an ELF file at all, long enough to have a header......").is_err());
    }
}

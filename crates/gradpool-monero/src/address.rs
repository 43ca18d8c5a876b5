//! Monero addresses: parsing, checksum validation and network checks.
//!
//! A Monero address is Monero's own base58 (8-byte blocks become 11
//! characters, a last partial block is shorter) of
//!
//! ```text
//! varint network/kind prefix ‖ public spend key (32) ‖ public view key (32)
//!   [‖ payment id (8), integrated addresses only] ‖ checksum (4)
//! ```
//!
//! where the checksum is the first 4 bytes of the original Keccak-256 (not
//! SHA3-256) of everything before it. Standard addresses and subaddresses
//! are 95 characters, integrated addresses 106.
//!
//! Prefixes, by network: mainnet 18 standard, 19 integrated, 42 subaddress;
//! testnet 53/54/63; stagenet 24/25/36. A `monerod --regtest` chain uses
//! **mainnet** addresses.
//!
//! Parsing checks the characters, the length, the base58 blocks, the
//! checksum and the prefix, in that order, so the error says what the user
//! most likely did wrong. It does not check that the keys are points on the
//! curve: the checksum already catches typing and copying mistakes, and the
//! wallet refuses a key that is not a point.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use tiny_keccak::{Hasher, Keccak};

/// Length in characters of a standard address or a subaddress.
pub const STANDARD_ADDRESS_LEN: usize = 95;
/// Length in characters of an integrated address.
pub const INTEGRATED_ADDRESS_LEN: usize = 106;

const KEY_LEN: usize = 32;
const PAYMENT_ID_LEN: usize = 8;
const CHECKSUM_LEN: usize = 4;
const BASE58_ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A Monero network. A regtest chain (`monerod --regtest`) uses
/// [`Network::Mainnet`] addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The real network (and regtest chains).
    Mainnet,
    /// The long-lived test network.
    Testnet,
    /// The staging network, which follows mainnet's rules.
    Stagenet,
}

impl Network {
    /// Every network, for iteration.
    pub const ALL: [Network; 3] = [Network::Mainnet, Network::Testnet, Network::Stagenet];

    /// The lower-case name: `mainnet`, `testnet`, `stagenet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Stagenet => "stagenet",
        }
    }

    /// The address prefixes of this network: (standard, integrated,
    /// subaddress).
    fn prefixes(self) -> (u64, u64, u64) {
        match self {
            Network::Mainnet => (18, 19, 42),
            Network::Testnet => (53, 54, 63),
            Network::Stagenet => (24, 25, 36),
        }
    }

    fn prefix_of(self, kind: &AddressKind) -> u64 {
        let (standard, integrated, subaddress) = self.prefixes();
        match kind {
            AddressKind::Standard => standard,
            AddressKind::Integrated { .. } => integrated,
            AddressKind::Subaddress => subaddress,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network name that is not `mainnet`, `testnet` or `stagenet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Monero network (expected mainnet, testnet or stagenet; a regtest chain uses mainnet)")]
pub struct UnknownNetwork(pub String);

impl FromStr for Network {
    type Err = UnknownNetwork;

    fn from_str(s: &str) -> Result<Network, UnknownNetwork> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mainnet" => Ok(Network::Mainnet),
            "testnet" => Ok(Network::Testnet),
            "stagenet" => Ok(Network::Stagenet),
            _ => Err(UnknownNetwork(s.to_string())),
        }
    }
}

/// What an address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// A wallet's primary address.
    Standard,
    /// A primary address with an 8-byte payment id folded in.
    Integrated {
        /// The payment id carried by the address.
        payment_id: [u8; PAYMENT_ID_LEN],
    },
    /// One of a wallet's subaddresses (`major`, `minor` ≠ 0, 0).
    Subaddress,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Standard => "standard address",
            AddressKind::Integrated { .. } => "integrated address",
            AddressKind::Subaddress => "subaddress",
        })
    }
}

/// Why a string is not a usable Monero address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing was given.
    #[error("the address is empty")]
    Empty,
    /// A character outside Monero's base58 alphabet.
    #[error(
        "invalid character {character:?} at position {position}: Monero addresses use base58 \
         (digits and letters except 0, O, I and l)"
    )]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its position, counting from 1.
        position: usize,
    },
    /// Not 95 or 106 characters long.
    #[error(
        "wrong length: {length} characters, but a Monero address has {STANDARD_ADDRESS_LEN} \
         ({INTEGRATED_ADDRESS_LEN} for an integrated address); was it cut off or pasted twice?"
    )]
    WrongLength {
        /// The length that was given, in characters.
        length: usize,
    },
    /// A base58 block decodes to more than its bytes can hold.
    #[error("not valid base58 (block {block} is out of range): a character was mistyped")]
    InvalidEncoding {
        /// The 11-character block at fault, counting from 1.
        block: usize,
    },
    /// The checksum does not match the rest of the address.
    #[error("bad checksum: a character was mistyped")]
    BadChecksum,
    /// The checksum is right but the prefix is not one of Monero's.
    #[error("unknown network prefix {prefix}: this is not a Monero address")]
    UnknownPrefix {
        /// The varint prefix that was found.
        prefix: u64,
    },
    /// The prefix says one kind of address but the length says another.
    #[error("the prefix says {network} {kind}, but the length does not match one")]
    KindLengthMismatch {
        /// The network the prefix names.
        network: Network,
        /// The kind the prefix names.
        kind: AddressKind,
    },
    /// A valid address of another network.
    #[error("a {found} address, but this pool runs on {expected}")]
    WrongNetwork {
        /// The address's network.
        found: Network,
        /// The network that was required.
        expected: Network,
    },
}

/// A parsed, checksum-validated Monero address.
///
/// [`Display`](fmt::Display) and serde give back the address string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    encoded: String,
    network: Network,
    kind: AddressKind,
    public_spend_key: [u8; KEY_LEN],
    public_view_key: [u8; KEY_LEN],
}

impl Address {
    /// Parses and validates an address string. Surrounding whitespace is
    /// ignored.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some((i, character)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !BASE58_ALPHABET.contains(*c))
        {
            return Err(AddressError::InvalidCharacter {
                character,
                position: i + 1,
            });
        }
        // Only ASCII is left, so bytes are characters.
        let length = s.len();
        if length != STANDARD_ADDRESS_LEN && length != INTEGRATED_ADDRESS_LEN {
            return Err(AddressError::WrongLength { length });
        }
        let bytes = base58_monero::decode(s).map_err(|_| AddressError::InvalidEncoding {
            block: first_bad_block(s),
        })?;
        let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(AddressError::WrongLength { length });
        };
        let (body, checksum) = bytes.split_at(split);
        if checksum != keccak_checksum(body) {
            return Err(AddressError::BadChecksum);
        }
        let (prefix, rest) = read_varint(body).ok_or(AddressError::UnknownPrefix { prefix: 0 })?;
        let (network, kind_tag) =
            classify_prefix(prefix).ok_or(AddressError::UnknownPrefix { prefix })?;
        let expected_rest = match kind_tag {
            KindTag::Integrated => 2 * KEY_LEN + PAYMENT_ID_LEN,
            KindTag::Standard | KindTag::Subaddress => 2 * KEY_LEN,
        };
        let mut spend = [0u8; KEY_LEN];
        let mut view = [0u8; KEY_LEN];
        let mut payment_id = [0u8; PAYMENT_ID_LEN];
        if rest.len() != expected_rest {
            let kind = match kind_tag {
                KindTag::Standard => AddressKind::Standard,
                KindTag::Integrated => AddressKind::Integrated { payment_id },
                KindTag::Subaddress => AddressKind::Subaddress,
            };
            return Err(AddressError::KindLengthMismatch { network, kind });
        }
        spend.copy_from_slice(&rest[..KEY_LEN]);
        view.copy_from_slice(&rest[KEY_LEN..2 * KEY_LEN]);
        let kind = match kind_tag {
            KindTag::Standard => AddressKind::Standard,
            KindTag::Subaddress => AddressKind::Subaddress,
            KindTag::Integrated => {
                payment_id.copy_from_slice(&rest[2 * KEY_LEN..]);
                AddressKind::Integrated { payment_id }
            }
        };
        Ok(Address {
            encoded: s.to_string(),
            network,
            kind,
            public_spend_key: spend,
            public_view_key: view,
        })
    }

    /// Builds the address of the given keys, kind and network (for example
    /// an integrated address from a standard address's keys and a payment
    /// id).
    pub fn from_parts(
        network: Network,
        kind: AddressKind,
        public_spend_key: [u8; KEY_LEN],
        public_view_key: [u8; KEY_LEN],
    ) -> Address {
        let mut bytes = Vec::with_capacity(1 + 2 * KEY_LEN + PAYMENT_ID_LEN + CHECKSUM_LEN);
        write_varint(&mut bytes, network.prefix_of(&kind));
        bytes.extend_from_slice(&public_spend_key);
        bytes.extend_from_slice(&public_view_key);
        if let AddressKind::Integrated { payment_id } = &kind {
            bytes.extend_from_slice(payment_id);
        }
        let checksum = keccak_checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        Address {
            encoded: encode_base58(&bytes),
            network,
            kind,
            public_spend_key,
            public_view_key,
        }
    }

    /// Refuses an address of another network than `expected`, with an error
    /// that names both (`a testnet address, but this pool runs on mainnet`).
    pub fn expect_network(self, expected: Network) -> Result<Address, AddressError> {
        if self.network == expected {
            Ok(self)
        } else {
            Err(AddressError::WrongNetwork {
                found: self.network,
                expected,
            })
        }
    }

    /// The network the address belongs to.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Standard, integrated (with its payment id) or subaddress.
    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// Whether this is a subaddress.
    pub fn is_subaddress(&self) -> bool {
        self.kind == AddressKind::Subaddress
    }

    /// The payment id of an integrated address.
    pub fn payment_id(&self) -> Option<[u8; PAYMENT_ID_LEN]> {
        match self.kind {
            AddressKind::Integrated { payment_id } => Some(payment_id),
            _ => None,
        }
    }

    /// The public spend key.
    pub fn public_spend_key(&self) -> &[u8; KEY_LEN] {
        &self.public_spend_key
    }

    /// The public view key.
    pub fn public_view_key(&self) -> &[u8; KEY_LEN] {
        &self.public_view_key
    }

    /// The address string.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encoded)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Address({} {}: {})",
            self.network, self.kind, self.encoded
        )
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encoded)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        let s = String::deserialize(deserializer)?;
        Address::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy)]
enum KindTag {
    Standard,
    Integrated,
    Subaddress,
}

fn classify_prefix(prefix: u64) -> Option<(Network, KindTag)> {
    Network::ALL.into_iter().find_map(|network| {
        let (standard, integrated, subaddress) = network.prefixes();
        if prefix == standard {
            Some((network, KindTag::Standard))
        } else if prefix == integrated {
            Some((network, KindTag::Integrated))
        } else if prefix == subaddress {
            Some((network, KindTag::Subaddress))
        } else {
            None
        }
    })
}

/// The first 4 bytes of the original Keccak-256 of `data`.
fn keccak_checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Keccak::v256();
    hasher.update(data);
    let mut digest = [0u8; 32];
    hasher.finalize(&mut digest);
    let mut checksum = [0u8; CHECKSUM_LEN];
    checksum.copy_from_slice(&digest[..CHECKSUM_LEN]);
    checksum
}

/// Reads a LEB128 varint (Monero's), returning it and the bytes after it.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        value |= part.checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn encode_base58(bytes: &[u8]) -> String {
    // Encoding fails only for an empty block, which chunks() never yields.
    base58_monero::encode(bytes).unwrap_or_default()
}

/// The first 11-character block that does not decode on its own (1-based).
fn first_bad_block(s: &str) -> usize {
    s.as_bytes()
        .chunks(11)
        .position(|block| {
            std::str::from_utf8(block)
                .map(|b| base58_monero::decode(b).is_err())
                .unwrap_or(true)
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Addresses generated by monero-wallet-rpc 0.18 (mainnet, testnet and
    // stagenet wallets; the integrated ones with payment id
    // 0123456789abcdef), and the Monero general fund's donation address.
    const DONATION: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
    const MAIN_STANDARD: &str = "4BC2EsA4nhsMC8QZpxpfB68c2fDA39XQeSJmR4hcwxGZ3CcJTogRnRm7BCwedHivNiBZ6AZ4L4ai9ExYX9Y92nJXFhPdG2T";
    const MAIN_INTEGRATED: &str = "4LthFfyZPyPMC8QZpxpfB68c2fDA39XQeSJmR4hcwxGZ3CcJTogRnRm7BCwedHivNiBZ6AZ4L4ai9ExYX9Y92nJXNkCwrXAqRLGU35iyt5";
    const MAIN_SUBADDRESS: &str = "86Y4xggXsHE54SJBHL8PiPEf8BKTUbjpbLCkBTVjbdJofoGNtumg6rKdZCLRYj9Ed44sD9orhZ2VwRNsV726yoku1XhEvVD";
    const TEST_STANDARD: &str = "9zbLs32pRi9FuRsZmq88HGbha2FtJtfVUH5YB4MJuZ5sYe1JZR8sau65WFAHo1DtseFaDz2tvqgWXavSjTaHtkF1FqvaqYC";
    const TEST_INTEGRATED: &str = "AAJ1sqrK2yfFuRsZmq88HGbha2FtJtfVUH5YB4MJuZ5sYe1JZR8sau65WFAHo1DtseFaDz2tvqgWXavSjTaHtkF1NuucsKzL2bnTxwWH23";
    const TEST_SUBADDRESS: &str = "BdUAJGkMoZsDKZYt714sy65M7C6V9DY7vPCZkwX5wzQz1txPuQeHDSHHLJSBAZABuJ1sYU7rC8LCV5VwoYvC18aW7mt8Gte";
    const STAGE_STANDARD: &str = "53QhdZBhbw49EqojkKuz9XBDBZpQ2C6x6E7DeYkxx1KVSDVvrAMBxokKbuoBup9yeHNEgUa3NCpgk8RFYYffZQj33w2NEt1";
    const STAGE_INTEGRATED: &str = "5D7NeN1CDCa9EqojkKuz9XBDBZpQ2C6x6E7DeYkxx1KVSDVvrAMBxokKbuoBup9yeHNEgUa3NCpgk8RFYYffZQj35BaKPmC3aExU4D8fEA";
    const STAGE_SUBADDRESS: &str = "74m1TRiCJh43eGEetgnodBZh5HbPyKPj4T7PerwfrnEwWmpFkiw8Ravf42TBS6oWqr92aFxVx6eXvbKAq3vmLm2wM5uPaZp";
    const PAYMENT_ID: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

    fn parse(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_real_addresses_of_every_network_and_kind() {
        let cases = [
            (DONATION, Network::Mainnet, AddressKind::Standard),
            (MAIN_STANDARD, Network::Mainnet, AddressKind::Standard),
            (
                MAIN_INTEGRATED,
                Network::Mainnet,
                AddressKind::Integrated {
                    payment_id: PAYMENT_ID,
                },
            ),
            (MAIN_SUBADDRESS, Network::Mainnet, AddressKind::Subaddress),
            (TEST_STANDARD, Network::Testnet, AddressKind::Standard),
            (
                TEST_INTEGRATED,
                Network::Testnet,
                AddressKind::Integrated {
                    payment_id: PAYMENT_ID,
                },
            ),
            (TEST_SUBADDRESS, Network::Testnet, AddressKind::Subaddress),
            (STAGE_STANDARD, Network::Stagenet, AddressKind::Standard),
            (
                STAGE_INTEGRATED,
                Network::Stagenet,
                AddressKind::Integrated {
                    payment_id: PAYMENT_ID,
                },
            ),
            (STAGE_SUBADDRESS, Network::Stagenet, AddressKind::Subaddress),
        ];
        for (s, network, kind) in cases {
            let a = parse(s);
            assert_eq!(a.network(), network, "{s}");
            assert_eq!(a.kind(), kind, "{s}");
            assert_eq!(a.to_string(), s);
            // Re-encoding the parts gives the same string back.
            let again =
                Address::from_parts(network, kind, *a.public_spend_key(), *a.public_view_key());
            assert_eq!(again, a);
        }
    }

    #[test]
    fn integrated_address_carries_the_standard_addresss_keys() {
        let standard = parse(MAIN_STANDARD);
        let integrated = parse(MAIN_INTEGRATED);
        assert_eq!(integrated.public_spend_key(), standard.public_spend_key());
        assert_eq!(integrated.public_view_key(), standard.public_view_key());
        assert_eq!(integrated.payment_id(), Some(PAYMENT_ID));
        assert_eq!(standard.payment_id(), None);
        let built = Address::from_parts(
            Network::Mainnet,
            AddressKind::Integrated {
                payment_id: PAYMENT_ID,
            },
            *standard.public_spend_key(),
            *standard.public_view_key(),
        );
        assert_eq!(built.as_str(), MAIN_INTEGRATED);
        assert!(parse(MAIN_SUBADDRESS).is_subaddress());
    }

    #[test]
    fn a_mistyped_character_fails_the_checksum() {
        // Change one character in the middle to another base58 character.
        let mut chars: Vec<char> = DONATION.chars().collect();
        chars[40] = if chars[40] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        let err = Address::parse(&typo).unwrap_err();
        assert_eq!(err, AddressError::BadChecksum);
        assert_eq!(err.to_string(), "bad checksum: a character was mistyped");
    }

    #[test]
    fn swapped_neighbours_fail_the_checksum() {
        let mut chars: Vec<char> = MAIN_SUBADDRESS.chars().collect();
        let i = (10..80).find(|&i| chars[i] != chars[i + 1]).unwrap();
        chars.swap(i, i + 1);
        let typo: String = chars.into_iter().collect();
        assert!(matches!(
            Address::parse(&typo),
            Err(AddressError::BadChecksum | AddressError::InvalidEncoding { .. })
        ));
    }

    #[test]
    fn a_truncated_address_has_the_wrong_length() {
        let err = Address::parse(&DONATION[..94]).unwrap_err();
        assert_eq!(err, AddressError::WrongLength { length: 94 });
        assert!(
            err.to_string().contains("wrong length: 94 characters"),
            "{err}"
        );
        let doubled = format!("{DONATION}{DONATION}");
        assert_eq!(
            Address::parse(&doubled).unwrap_err(),
            AddressError::WrongLength { length: 190 }
        );
    }

    #[test]
    fn invalid_characters_are_named_with_their_position() {
        let mut s = DONATION.to_string();
        s.replace_range(4..5, "0");
        let err = Address::parse(&s).unwrap_err();
        assert_eq!(
            err,
            AddressError::InvalidCharacter {
                character: '0',
                position: 5
            }
        );
        assert!(
            err.to_string()
                .contains("invalid character '0' at position 5"),
            "{err}"
        );
        assert!(matches!(
            Address::parse("4AFF l"),
            Err(AddressError::InvalidCharacter {
                character: ' ',
                position: 5
            })
        ));
        assert_eq!(Address::parse("  ").unwrap_err(), AddressError::Empty);
    }

    #[test]
    fn network_mismatch_is_explained() {
        let err = parse(TEST_STANDARD)
            .expect_network(Network::Mainnet)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a testnet address, but this pool runs on mainnet"
        );
        let err = parse(MAIN_SUBADDRESS)
            .expect_network(Network::Stagenet)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a mainnet address, but this pool runs on stagenet"
        );
        assert!(parse(STAGE_SUBADDRESS)
            .expect_network(Network::Stagenet)
            .is_ok());
    }

    #[test]
    fn an_unknown_prefix_with_a_good_checksum_is_not_monero() {
        // Prefix 0 re-encoded with a correct checksum: 1 + 64 + 4 bytes, 95 chars.
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&[7u8; 64]);
        let checksum = keccak_checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        let s = encode_base58(&bytes);
        assert_eq!(s.len(), STANDARD_ADDRESS_LEN);
        assert_eq!(
            Address::parse(&s).unwrap_err(),
            AddressError::UnknownPrefix { prefix: 0 }
        );
    }

    #[test]
    fn an_integrated_prefix_on_a_short_address_is_refused() {
        let mut bytes = vec![19u8];
        bytes.extend_from_slice(&[7u8; 64]);
        let checksum = keccak_checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        let err = Address::parse(&encode_base58(&bytes)).unwrap_err();
        assert!(matches!(
            err,
            AddressError::KindLengthMismatch {
                network: Network::Mainnet,
                kind: AddressKind::Integrated { .. }
            }
        ));
    }

    #[test]
    fn an_out_of_range_block_is_reported() {
        // "zzzzzzzzzzz" is above 2^64 - 1.
        let s = format!("zzzzzzzzzzz{}", &DONATION[11..]);
        assert_eq!(
            Address::parse(&s).unwrap_err(),
            AddressError::InvalidEncoding { block: 1 }
        );
    }

    #[test]
    fn serde_is_the_address_string() {
        let a = parse(MAIN_INTEGRATED);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{MAIN_INTEGRATED}\""));
        let back: Address = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let err = serde_json::from_str::<Address>(&format!("\"{}\"", &MAIN_INTEGRATED[..100]))
            .unwrap_err();
        assert!(err.to_string().contains("wrong length"), "{err}");
    }

    #[test]
    fn whitespace_around_is_ignored() {
        let a = parse(&format!("  {DONATION}\n"));
        assert_eq!(a.as_str(), DONATION);
        assert_eq!(DONATION.parse::<Address>().unwrap(), a);
    }

    #[test]
    fn networks_parse_and_print() {
        for n in Network::ALL {
            assert_eq!(n.to_string().parse::<Network>().unwrap(), n);
        }
        assert!("regtest"
            .parse::<Network>()
            .unwrap_err()
            .to_string()
            .contains("regtest chain uses mainnet"));
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 18, 127, 128, 300, 0x3fff, 0x4000, u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            out.push(0xaa);
            assert_eq!(read_varint(&out), Some((v, &[0xaa][..])));
        }
        assert_eq!(read_varint(&[0x80]), None);
    }
}

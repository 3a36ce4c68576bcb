//! Typed handles on the pinned maps, opened (and shape-checked) from a pin layout.
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, SkStorage};
use router_common::{
    Backend, ConnCount, DataplaneMeta, LAYOUT_VERSION, META_MAGIC, PoolInfo, PoolKey,
    SelectionTable, SockLb,
};

use super::{
    error::DataplaneError,
    pins::{self, MapSpec, PinLayout},
};

/// One inner selection map: a single element holding the whole table.
pub type SelectionMap = Array<MapData, SelectionTable>;

pub struct Maps {
    pub pools: HashMap<MapData, PoolKey, PoolInfo>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub selection: ArrayOfMaps<MapData, SelectionMap>,
    pub sock_lb: SkStorage<MapData, SockLb>,
    pub conns: Array<MapData, ConnCount>,
    pub stats: PerCpuArray<MapData, u64>,
    pub meta: Array<MapData, DataplaneMeta>,
}

impl std::fmt::Debug for Maps {
    // aya's array handles do not implement Debug; the pin paths say which maps these are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

impl Maps {
    /// Opens every pinned map of `layout`, checking each one's shape and the meta record.
    pub fn open(layout: &PinLayout) -> Result<Self, DataplaneError> {
        let maps = Self {
            pools: typed(layout, &pins::POOLS)?,
            backends: typed(layout, &pins::BACKENDS)?,
            selection: typed(layout, &pins::SELECTION)?,
            sock_lb: typed(layout, &pins::SOCK_LB)?,
            conns: typed(layout, &pins::CONNS)?,
            stats: typed(layout, &pins::STATS)?,
            meta: typed(layout, &pins::META)?,
        };
        maps.read_meta(layout)?;
        Ok(maps)
    }

    /// The meta record, checked to be ours and of this layout version.
    pub fn read_meta(&self, layout: &PinLayout) -> Result<DataplaneMeta, DataplaneError> {
        read_meta(&self.meta, layout)
    }

    /// Replaces the meta record.
    pub fn write_meta(&mut self, meta: &DataplaneMeta) -> Result<(), DataplaneError> {
        self.meta
            .set(0, meta, 0)
            .map_err(DataplaneError::map(pins::META.pin_name))
    }
}

/// Reads and checks the meta record of `meta`.
pub fn read_meta(
    meta: &Array<MapData, DataplaneMeta>,
    layout: &PinLayout,
) -> Result<DataplaneMeta, DataplaneError> {
    let record = meta
        .get(&0, 0)
        .map_err(DataplaneError::map(pins::META.pin_name))?;
    if record.magic != META_MAGIC || record.layout != LAYOUT_VERSION {
        return Err(DataplaneError::StalePin {
            path: layout.map(&pins::META),
            detail: format!(
                "meta magic {:#x} layout {} (expected {META_MAGIC:#x} layout {LAYOUT_VERSION})",
                record.magic, record.layout
            ),
        });
    }
    Ok(record)
}

fn typed<T>(layout: &PinLayout, spec: &MapSpec) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = pins::open_checked(&layout.map(spec), spec)?;
    let map = Map::from_map_data(data).map_err(DataplaneError::map(spec.pin_name))?;
    T::try_from(map).map_err(DataplaneError::map(spec.pin_name))
}

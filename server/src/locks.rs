//! Lock helpers that survive a poisoned lock, for every module of the server.

use std::sync::{Mutex, RwLock};

/// A read guard, also of a lock a panicking writer poisoned: the data behind the server's
/// locks stays consistent because every writer replaces whole values.
pub fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
/// A write guard, poisoned or not (see [`read`]).
pub fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
/// A mutex guard, poisoned or not (see [`read`]).
pub fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

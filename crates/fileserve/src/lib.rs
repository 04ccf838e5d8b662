//! fileserve

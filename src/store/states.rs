//! The state enums of [`crate::domain`] as the store reads and writes
//! them: a lowercase word in a text column, on either backend.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Type};

use crate::domain::{BounceKind, BounceSource, DeliveryStatus, RunStatus, SubscriberStatus};

macro_rules! stored_as_text {
    ($($state:ty),+) => {$(
        impl Type<Postgres> for $state {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as Type<Postgres>>::compatible(ty)
            }
        }

        impl Type<Sqlite> for $state {
            fn type_info() -> SqliteTypeInfo {
                <str as Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <str as Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $state {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<Postgres>>::decode(value)?;
                <$state>::parse(text)
                    .ok_or_else(|| format!("unknown {} `{text}`", stringify!($state)).into())
            }
        }

        impl<'r> Decode<'r, Sqlite> for $state {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<Sqlite>>::decode(value)?;
                <$state>::parse(text)
                    .ok_or_else(|| format!("unknown {} `{text}`", stringify!($state)).into())
            }
        }

        impl Encode<'_, Postgres> for $state {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'q> Encode<'q, Sqlite> for $state {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<SqliteArgumentValue<'q>>,
            ) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Sqlite>>::encode(self.as_str(), buf)
            }
        }
    )+};
}

stored_as_text!(
    SubscriberStatus,
    RunStatus,
    DeliveryStatus,
    BounceKind,
    BounceSource
);

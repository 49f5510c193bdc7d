// The SDK's types held to the schema: type-checked by tests/sdk/test_sdk_schema.py, never run. That test generates
// docs/openapi.json's types with openapi-typescript (imported here as "moonborn-schema", a `paths` entry of the
// tsconfig it writes) and, from the schema, one check per event and one per component of where it is open (`{}`),
// then runs `tsc --noEmit --strict` over them and this file. A check that fails names what disagrees:
// `Type '{ event: "token"; sdkOnly: "delta"; … }' does not satisfy the constraint 'true'`.
//
// An event's `data` must agree with the schema's both ways: the same keys, the same optionality (an optional key's
// type includes `undefined`), the same types, compared key by key down to the leaves. Every field a model declares
// must be in the schema's component with a type whose values the SDK's type accepts: one way only, as the SDK
// declares some fields and leaves the rest to `[key: string]: unknown` (and may accept more, as a step's
// `status: string` does). Three allowances, each deliberate, for what the schema cannot say or the SDK leaves open:
//   A. a value the schema leaves open (`{}`, any JSON: a persona's `card`, a step's `output`) may have any SDK type:
//      the schema makes no claim for the SDK to break (and the test checks that only those are `unknown`);
//   B. an object the schema leaves open (`additionalProperties: {}`, its keys named in prose: a lore entry's
//      `reason` with its `kind`) may be any SDK object type;
//   C. where the schema has a string enum, the SDK may have `string`: codes widened with `| string` (an error
//      event's `code`) so that a code a newer server adds still type-checks. (`"a" | string` is `string` to the
//      compiler, so the codes the SDK lists cannot be compared with the schema's.)

import type { components } from "moonborn-schema";
import type { ChatEvent, ChatSession, DriftTier1, Message, Page, Persona, PersonaEvent, Reply } from "../src/index.js";

type Schemas = components["schemas"];

/** `Expect<X>` compiles only when X is `true`; else the error shows X, which names what disagrees. */
export type Expect<T extends true> = T;

type SdkEvent = ChatEvent | PersonaEvent;
type SdkEventName = SdkEvent["type"];
type SdkEventData<Name> = Extract<SdkEvent, { type: Name }>["data"];

type Nullish = null | undefined;
type Get<T, K> = K extends keyof T ? T[K] : never;
/** The keys a type names, without its index signature (`[key: string]: unknown`). */
type DeclaredKeys<T> = keyof { [K in keyof T as K extends string ? (string extends K ? never : K) : never]: 0 };
/** `{ [key: string]: unknown }` and nothing more (allowance B). */
type IsOpenObject<S> = [DeclaredKeys<S>] extends [never]
  ? string extends keyof S
    ? unknown extends Get<S, string>
      ? true
      : false
    : false
  : false;
type IsStringEnum<S> = [S] extends [never] ? false : [S] extends [string] ? (string extends S ? false : true) : false;
type IsString<T> = [T] extends [string] ? (string extends T ? true : false) : false;
type AllTrue<T> = false extends T ? false : true;

/**
 * The keys of a schema component that openapi-typescript made `unknown` are `Keys`, the ones the test found left
 * open (`{}`) in the schema: allowance A never covers a construct the generator failed to read.
 */
export type OpenKeysAre<Name extends string, Component, Keys extends string> = [
  { [K in keyof Component]-?: unknown extends Component[K] ? K : never }[keyof Component],
] extends [infer Open]
  ? [Exclude<Open, Keys>, Exclude<Keys, Open>] extends [never, never]
    ? true
    : { component: Name; openKeys: Open }
  : never;

/** Every value of the schema's type S is a value of the SDK's type D (up to allowances A and B). */
type Fits<S, D> = unknown extends S
  ? true // A
  : [S] extends [D]
    ? true
    : [Extract<S, Nullish>] extends [Extract<D, Nullish>]
      ? FitsValue<NonNullable<S>, NonNullable<D>>
      : false;
type FitsValue<S, D> = [S] extends [D]
  ? true
  : [S] extends [readonly (infer SI)[]]
    ? [D] extends [readonly (infer DI)[]]
      ? Fits<SI, DI>
      : false
    : IsOpenObject<S> extends true
      ? [D] extends [object]
        ? true // B
        : false
      : [S] extends [object]
        ? [D] extends [object]
          ? AllTrue<FitsKeys<S, D>[DeclaredKeys<D>]>
          : false
        : false;
/** Per key the SDK's type D declares: the schema's type S has it, with values D's accepts. */
type FitsKeys<S, D> = { [K in DeclaredKeys<D>]-?: K extends DeclaredKeys<S> ? Fits<Get<S, K>, Get<D, K>> : false };

/** Every value of the SDK's type D is a value of the schema's type S (up to allowance C). */
type Covers<D, S> = [D] extends [S]
  ? true
  : [Extract<D, Nullish>] extends [Extract<S, Nullish>]
    ? CoversValue<NonNullable<D>, NonNullable<S>>
    : false;
type CoversValue<D, S> = [D] extends [S]
  ? true
  : IsStringEnum<S> extends true
    ? IsString<D> // C
    : [D] extends [readonly (infer DI)[]]
      ? [S] extends [readonly (infer SI)[]]
        ? Covers<DI, SI>
        : false
      : [D] extends [object]
        ? [S] extends [object]
          ? AllTrue<CoversKeys<D, S>[DeclaredKeys<S>]>
          : false
        : false;
type CoversKeys<D, S> = { [K in DeclaredKeys<S>]-?: K extends DeclaredKeys<D> ? Covers<Get<D, K>, Get<S, K>> : false };

/** The SDK's type D and the schema's S allow the same values (up to allowances A–C). */
type Agrees<D, S> = Fits<S, D> extends true ? Covers<D, S> : false;

/** The SDK has a type for each event the schema documents, and none the schema does not. */
export type EventNamesAgree<SchemaEventName extends string> = [
  Exclude<SchemaEventName, SdkEventName>,
  Exclude<SdkEventName, SchemaEventName>,
] extends [never, never]
  ? true
  : {
      eventsNotInSdk: Exclude<SchemaEventName, SdkEventName>;
      eventsNotInSchema: Exclude<SdkEventName, SchemaEventName>;
    };

/** The SDK's `data` of the event `Name` agrees with the schema's data component. */
export type EventAgrees<Name extends string, SchemaData> = [SdkEventData<Name>] extends [never]
  ? { event: Name; sdk: "has no type for this event" }
  : unknown extends SchemaData
    ? { event: Name; schema: "has no type for its data" }
    : Agrees<SdkEventData<Name>, SchemaData> extends true
      ? true
      : {
          event: Name;
          sdkOnly: Exclude<DeclaredKeys<SdkEventData<Name>>, DeclaredKeys<SchemaData>>;
          schemaOnly: Exclude<DeclaredKeys<SchemaData>, DeclaredKeys<SdkEventData<Name>>>;
          disagreeing: {
            [K in DeclaredKeys<SdkEventData<Name>> & DeclaredKeys<SchemaData>]-?: Agrees<
              Get<SdkEventData<Name>, K>,
              Get<SchemaData, K>
            > extends true
              ? never
              : K;
          }[DeclaredKeys<SdkEventData<Name>> & DeclaredKeys<SchemaData>];
        };

/** Every field the SDK's model declares is in the schema's component, with values the SDK's type accepts. */
type ModelFits<Name extends string, Sdk, Schema> = unknown extends Schema
  ? { model: Name; schema: "has no type for it" }
  : Fits<Schema, Sdk> extends true
    ? true
    : {
        model: Name;
        sdkOnly: Exclude<DeclaredKeys<Sdk>, DeclaredKeys<Schema>>;
        disagreeing: {
          [K in DeclaredKeys<Sdk> & DeclaredKeys<Schema>]-?: Fits<Get<Schema, K>, Get<Sdk, K>> extends true ? never : K;
        }[DeclaredKeys<Sdk> & DeclaredKeys<Schema>];
      };

export type Models = [
  Expect<ModelFits<"Persona", Persona, Schemas["Persona"]>>,
  Expect<ModelFits<"ChatSession", ChatSession, Schemas["ChatSession"]>>,
  Expect<ModelFits<"Message", Message, Schemas["Message"]>>,
  Expect<ModelFits<"Reply", Reply, Schemas["Reply"]>>,
  Expect<ModelFits<"DriftTier1", DriftTier1, Schemas["DriftTier1"]>>,
  Expect<ModelFits<"Page<Persona>", Page<Persona>, Schemas["PaginatedPersonaList"]>>,
  Expect<ModelFits<"Page<ChatSession>", Page<ChatSession>, Schemas["PaginatedChatSessionList"]>>,
  Expect<ModelFits<"Page<Message>", Page<Message>, Schemas["PaginatedMessageList"]>>,
];
